//! The second classic experiment: a scoring service that calls a model service twice per request,
//! with a blocking client on the executor, with an async client, and with the blocking client
//! moved into `spawn_blocking`; hogwatch's verdict on each.
//!
//! ```sh
//! cargo run --release --example scoring                     # ~15 s
//! cargo run --release --example scoring -- --requests 500 --concurrency 50
//! ```
//!
//! The scoring service ([`support::scoring_app::app`]) runs on a runtime with two workers; the
//! model service ([`support::scoring_app::ModelService`]) on its own listener and runtime, as a
//! separate service would (why: see `support/scoring_app.rs`). For each variant in turn the load
//! driver sends `--requests` `POST /{variant}/score` over `--concurrency` connections while a
//! canary requests the scoring service's `/health`. One hogwatch detector watches both services,
//! so one report shows the scoring routes and the model routes. Its lag probe runs on the scoring
//! service's runtime: the `inflicted` column is the delay each scoring route made the rest of
//! that runtime suffer, what the canary measures from outside. The model service's slow polls
//! held only its own runtime's threads, which the probe never runs on: they are charged nothing.

mod support;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use hogwatch::{Builder, Detector};
use support::load::Load;
use support::scoring_app::{self, ModelService, ScoreRequest};
use support::table::{self, duration, Table};

/// The hog threshold: hogwatch's default, a quarter of one model call. A `sync` scoring request
/// holds its worker for two calls, about 90 ms; nothing else on the scoring executor comes near.
const THRESHOLD: Duration = Duration::from_millis(10);
/// The stall watchdog's threshold: any poll still running after this long (a blocking model
/// call, a blocking client) is sampled while it blocks, for its culprit and cause. The same as
/// the hog threshold; `--no-watchdog` turns it off.
const WATCHDOG: Duration = Duration::from_millis(10);
/// How often the canary requests `/health`.
const CANARY_PERIOD: Duration = Duration::from_millis(5);
/// The pause after each variant's load before its row is read from the report: a late
/// wake-up of the lag probe is charged two thresholds plus 50 ms after it ends (70 ms here), so
/// a row read sooner would miss the delay of the variant's last requests.
const SETTLE: Duration = Duration::from_millis(150);
/// Worker threads of the scoring service's runtime.
const WORKERS: usize = 2;

const USAGE: &str = "\
usage: scoring [--requests N] [--concurrency C] [--no-watchdog]

  --requests N       POST /{variant}/score requests per variant (default 200)
  --concurrency C    concurrent connections (default 20)
  --no-watchdog      no stall watchdog (on by default: culprit and cause of each hog)";

/// What the command line asks for.
struct Options {
    requests: u64,
    concurrency: usize,
    watchdog: bool,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let (mut requests, mut concurrency, mut watchdog) = (200u64, 20usize, true);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--no-watchdog" => watchdog = false,
            "--requests" => requests = positive(&flag, &value()?)?,
            "--concurrency" => concurrency = positive(&flag, &value()?)?,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Some(Options {
        requests,
        concurrency,
        watchdog,
    }))
}

fn positive<T: std::str::FromStr + PartialOrd + From<u8>>(
    flag: &str,
    value: &str,
) -> Result<T, String> {
    match value.parse::<T>() {
        Ok(number) if number >= T::from(1) => Ok(number),
        _ => Err(format!(
            "{flag} needs a whole number of at least 1, not {value:?}"
        )),
    }
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("scoring: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(experiment(options)));
    result.unwrap_or_else(|error| {
        eprintln!("scoring: {error}");
        ExitCode::FAILURE
    })
}

async fn experiment(options: Options) -> Result<ExitCode, Box<dyn Error>> {
    let Options {
        requests,
        concurrency,
        watchdog,
    } = options;
    // Built on the scoring service's runtime, so the lag probe measures that one.
    let builder = Detector::builder()
        .threshold(THRESHOLD)
        .lag_probe(Builder::DEFAULT_LAG_RESOLUTION);
    let detector = match watchdog {
        true => builder.watchdog(WATCHDOG).build()?,
        false => builder.build()?,
    };
    // `fixed-sync` has up to `concurrency` blocking predictions in flight at once; give each its
    // own model worker, as a thread-per-request model server would.
    let model = ModelService::start(&detector, concurrency + WORKERS)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = scoring_app::app(&detector, model.addr());
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!(
        "scoring on {addr} ({WORKERS} workers), model service on {} ({} workers, {} per prediction), \
         threshold {}, watchdog {}, lag probe {}, {requests} requests per variant over {concurrency} connections, canary GET /health every {}\n",
        model.addr(),
        concurrency + WORKERS,
        duration(scoring_app::MODEL_LATENCY),
        duration(THRESHOLD),
        if watchdog { duration(WATCHDOG) } else { "off".to_owned() },
        duration(Builder::DEFAULT_LAG_RESOLUTION),
        duration(CANARY_PERIOD),
    );
    let body = serde_json::to_vec(&ScoreRequest { customer: 42 })?;
    let mut header = vec!["variant"];
    header.extend(table::LOAD_HEADER);
    header.push(table::INFLICTED_HEADER);
    header.extend(table::VERDICT_HEADER);
    header.extend(table::DIAGNOSIS_HEADER);
    header.extend(["model route", "model culprit", "model cause"]);
    let mut results = Table::new(header);
    let mut failed = 0;
    for variant in scoring_app::VARIANTS {
        let path = format!("/{variant}/score");
        eprintln!("loading POST {path} ...");
        let (load, health) = Load::post(addr, &path, "application/json", body.clone())
            .requests(requests)
            .concurrency(concurrency)
            .run_beside_canary("/health", CANARY_PERIOD)
            .await;
        failed += load.failures() + health.failures();
        tokio::time::sleep(SETTLE).await;

        let report = detector.report();
        let mut row = vec![variant.to_owned()];
        row.extend(table::load_cells(&load, &health));
        let entry = report.entry(&format!("POST {path}"));
        row.push(table::inflicted(entry));
        row.extend(table::verdict(entry));
        row.extend(table::diagnosis(entry));
        let model_entry = report.entry(&format!("POST /{variant}/model/predict"));
        let [_, _, _, model_verdict] = table::verdict(model_entry);
        row.push(model_verdict);
        row.extend(table::diagnosis(model_entry));
        results.row(row);
    }
    let report = detector.report();
    println!("{results}");
    println!("{}\n", table::delay_summary(&report, "GET /health"));
    println!("{}", report.to_text());
    if failed > 0 {
        eprintln!("scoring: {failed} requests failed or were not answered with a 2xx");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
