//! The classic experiment: a JSON service that parses and re-serialises cached documents on the
//! executor, next to the fixes, under load, with hogwatch's verdict on each.
//!
//! ```sh
//! cargo run --release --example json_service                      # the experiment, ~20 s
//! cargo run --release --example json_service -- --requests 1000 --concurrency 50 --size medium
//! cargo run --release --example json_service -- serve --port 3000 # only the server, for ab/wrk
//! ```
//!
//! The experiment serves [`support::json_app`] on `127.0.0.1:0` on a runtime with two workers,
//! and for each variant (`/blocking`, `/simd`, `/offload`, `/passthrough`) in turn sends
//! `--requests` requests over `--concurrency` connections with the in-process load driver while a
//! canary requests `/health` every 5 ms. It prints one row per variant (throughput, latency,
//! non-2xx, the canary's p99, the delay the variant's route inflicted on the rest of the runtime
//! and hogwatch's verdict on that route), the lag probe's delay in all and the canary route's
//! share of it, then hogwatch's report. Each variant has its own route, so each route's entry
//! holds only its variant's polls and its variant's inflicted delay.

mod support;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use hogwatch::{Builder, Detector};
use support::documents::Size;
use support::json_app::{self, Cache};
use support::load::Load;
use support::table::{self, duration, Table};

/// The hog threshold: hogwatch's default. A poll that holds a worker for 10 ms delays every
/// request queued on that worker by as much, a noticeable share of a typical 50-100 ms latency
/// budget. The 2 MB round-trip (~24 ms, `BENCHMARKS.md`) is well over it; everything the fixed
/// routes do on the executor is well under it, with margin for the scheduler's preemptions on a
/// busy 2-core machine, which a 1-2 ms threshold would count as hogs.
const THRESHOLD: Duration = Duration::from_millis(10);
/// The stall watchdog's threshold: any poll still running after this long is sampled while it
/// blocks (its culprit, what it was doing, its CPU time). The same as the hog threshold, so every
/// hog long enough to be seen gets a diagnosis; `--no-watchdog` turns it off.
const WATCHDOG: Duration = Duration::from_millis(10);
/// How often the canary requests `/health`.
const CANARY_PERIOD: Duration = Duration::from_millis(5);
/// The pause after each variant's load before its row is read from the report: a late
/// wake-up of the lag probe is charged two thresholds plus 50 ms after it ends (70 ms here), so
/// a row read sooner would miss the delay of the variant's last requests.
const SETTLE: Duration = Duration::from_millis(150);
/// Worker threads of the server's runtime: a small service, and the machine the figures in the
/// README come from.
const WORKERS: usize = 2;

const USAGE: &str = "\
usage: json_service [--requests N] [--concurrency C] [--size small|medium|big] [--no-watchdog]
       json_service serve [--port P] [--extra-label TEXT] [--no-watchdog]

  (no command)       run the experiment: load each variant in turn, print the table and report
  --requests N       requests per variant (default 300)
  --concurrency C    concurrent connections (default 20)
  --size S           document to request: small (~1 KB), medium (~100 KB), big (~2 MB; default)
  --no-watchdog      no stall watchdog (on by default: culprit and cause of each hog)
  serve              only run the server, for ab, wrk or a browser
  --port P           port to serve on (default 3000; 0 picks a free one)
  --extra-label TEXT also record one watched future under TEXT: a custom label, to see how
                     arbitrary labels show on the page (scripts/browser-check.sh uses it)";

#[derive(Debug)]
enum Command {
    Experiment {
        requests: u64,
        concurrency: usize,
        size: Size,
        watchdog: bool,
    },
    Serve {
        port: u16,
        extra_label: Option<String>,
        watchdog: bool,
    },
    Help,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter().peekable();
    let serve = args.next_if(|arg| arg == "serve").is_some();
    let (mut requests, mut concurrency, mut size, mut port) = (300u64, 20usize, Size::Big, 3000u16);
    let mut extra_label = None;
    let mut watchdog = true;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match (serve, flag.as_str()) {
            (_, "-h" | "--help") => return Ok(Command::Help),
            (_, "--no-watchdog") => watchdog = false,
            (false, "--requests") => requests = number(&flag, &value()?, 1)?,
            (false, "--concurrency") => concurrency = number(&flag, &value()?, 1)?,
            (false, "--size") => {
                let key = value()?;
                size = Size::from_key(&key)
                    .ok_or(format!("--size must be small, medium or big, not {key:?}"))?;
            }
            (true, "--port") => port = number(&flag, &value()?, 0)?,
            (true, "--extra-label") => extra_label = Some(value()?),
            (true, "--requests" | "--concurrency" | "--size") => {
                return Err(format!(
                    "{flag} is for the experiment; serve only takes --port and --extra-label"
                ))
            }
            (false, "--port" | "--extra-label") => {
                return Err(format!(
                    "{flag} is for serve: json_service serve {flag} ..."
                ))
            }
            (_, other) => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(match serve {
        true => Command::Serve {
            port,
            extra_label,
            watchdog,
        },
        false => Command::Experiment {
            requests,
            concurrency,
            size,
            watchdog,
        },
    })
}

/// `value` as a number of at least `min`.
fn number<T: std::str::FromStr + PartialOrd + From<u8>>(
    flag: &str,
    value: &str,
    min: u8,
) -> Result<T, String> {
    match value.parse::<T>() {
        Ok(number) if number >= T::from(min) => Ok(number),
        _ => Err(format!(
            "{flag} needs a whole number of at least {min}, not {value:?}"
        )),
    }
}

fn main() -> ExitCode {
    let command = match parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(command) => command,
        Err(message) => {
            eprintln!("json_service: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| {
            runtime.block_on(async {
                match command {
                    Command::Experiment {
                        requests,
                        concurrency,
                        size,
                        watchdog,
                    } => experiment(requests, concurrency, size, watchdog).await,
                    Command::Serve {
                        port,
                        extra_label,
                        watchdog,
                    } => serve(port, extra_label, watchdog).await,
                    Command::Help => Ok(ExitCode::SUCCESS),
                }
            })
        });
    result.unwrap_or_else(|error| {
        eprintln!("json_service: {error}");
        ExitCode::FAILURE
    })
}

/// The detector of both commands: the hog threshold, the watchdog unless `--no-watchdog`, and
/// the lag probe when asked (the experiment: its delay is what the `inflicted` column shares out).
///
/// `serve` runs without the probe: scripts/prometheus-check.sh loads a `serve` instance on
/// `/blocking` and expects no alert but the blocking route's, and the probe's lag alert names an
/// instance, not a route.
fn detector(watchdog: bool, lag_probe: bool) -> Result<Detector, hogwatch::ConfigError> {
    let builder = Detector::builder().threshold(THRESHOLD);
    let builder = match lag_probe {
        true => builder.lag_probe(Builder::DEFAULT_LAG_RESOLUTION),
        false => builder,
    };
    match watchdog {
        true => builder.watchdog(WATCHDOG).build(),
        false => builder.build(),
    }
}

async fn experiment(
    requests: u64,
    concurrency: usize,
    size: Size,
    watchdog: bool,
) -> Result<ExitCode, Box<dyn Error>> {
    let detector = detector(watchdog, true)?;
    let cache = Cache::new([size]);
    let document_len = cache.get(size.key()).map_or(0, |document| document.len());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = json_app::app(&detector, cache);
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!(
        "json_service on {addr}: {WORKERS} workers, threshold {}, watchdog {}, lag probe {}, document {} ({document_len} bytes), \
         {requests} requests per variant over {concurrency} connections, canary GET /health every {}\n",
        duration(THRESHOLD),
        if watchdog { duration(WATCHDOG) } else { "off".to_owned() },
        duration(Builder::DEFAULT_LAG_RESOLUTION),
        size.key(),
        duration(CANARY_PERIOD),
    );
    let mut header = vec!["variant"];
    header.extend(table::LOAD_HEADER);
    header.push(table::INFLICTED_HEADER);
    header.extend(table::VERDICT_HEADER);
    header.extend(table::DIAGNOSIS_HEADER);
    let mut results = Table::new(header);
    let mut failed = 0;
    for (variant, route) in json_app::VARIANTS {
        let path = format!("/{variant}/{}", size.key());
        eprintln!("loading GET {path} ...");
        let (load, health) = Load::get(addr, &path)
            .requests(requests)
            .concurrency(concurrency)
            .run_beside_canary("/health", CANARY_PERIOD)
            .await;
        failed += load.failures() + health.failures();
        tokio::time::sleep(SETTLE).await;

        let report = detector.report();
        let mut row = vec![variant.to_owned()];
        row.extend(table::load_cells(&load, &health));
        let entry = report.entry(&format!("GET {route}"));
        row.push(table::inflicted(entry));
        row.extend(table::verdict(entry));
        row.extend(table::diagnosis(entry));
        results.row(row);
    }
    let report = detector.report();
    println!("{results}");
    println!("{}\n", table::delay_summary(&report, "GET /health"));
    println!("{}", report.to_text());
    if failed > 0 {
        eprintln!("json_service: {failed} requests failed or were not answered with a 2xx");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    port: u16,
    extra_label: Option<String>,
    watchdog: bool,
) -> Result<ExitCode, Box<dyn Error>> {
    // Hog warnings (target `hogwatch`, at most one per route per second) on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let detector = detector(watchdog, false)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!(
        "json_service serving on {base} ({WORKERS} workers, threshold {}); Ctrl-C stops it",
        duration(THRESHOLD)
    );
    for (variant, _) in json_app::VARIANTS {
        println!("  {base}/{variant}/big   (or /small, /medium)");
    }
    println!("  {base}/health");
    println!("  {base}/debug/hogs               hogwatch's report as JSON (?format=text: a table, ?format=html: a page)");
    println!("  {base}/debug/hogs/metrics       the same for Prometheus");
    println!("try: ab -n 10000 -c 20 {base}/blocking/big");
    if let Some(label) = extra_label {
        detector.watch(&label, async {}).await;
    }
    let app = json_app::app(&detector, Cache::all());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("{}", detector.report().to_text());
    Ok(ExitCode::SUCCESS)
}

/// The experiment as tests, with hogwatch's test guard: the blocking variant fails its test, and
/// the message says where; the fixes pass. This is how the mistake is caught in CI, before any
/// load test (`cargo test --example json_service`, or `cargo test`).
#[cfg(all(test, target_os = "linux", feature = "watchdog"))]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use hogwatch::testing::forbid_blocking;
    use tower::ServiceExt;

    use super::*;

    /// The app with the big document cached. Made before the guard: building the cache
    /// serialises the document, 250 ms on the CPU in a debug build, which the guard would
    /// rightly report.
    fn app() -> axum::Router {
        let detector = Detector::builder().build().unwrap();
        json_app::app(&detector, Cache::new([Size::Big]))
    }

    /// Requests `route` for the big document, as a test drives a handler.
    async fn get(app: axum::Router, route: &str) -> StatusCode {
        let request = Request::get(route.replace("{key}", "big"))
            .body(Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn the_blocking_variant_fails_its_test() {
        let app = app();
        let guard = forbid_blocking();
        assert_eq!(get(app, "/blocking/{key}").await, StatusCode::OK);
        let message = guard.finish().unwrap_err();
        // In a release build the handler's `async fn` is inlined into axum's code: until the
        // debug information is loaded (on a loaded machine, after the stall was first seen),
        // names come from the symbol table, which has no inlined frames, and the task is named
        // after the function it called, as the watchdog guide says.
        assert!(
            message.contains("--> task json_service::support::json_app::blocking held")
                || (!cfg!(debug_assertions)
                    && message.contains(
                        "--> task json_service::support::json_app::serde_round_trip held"
                    )),
            "{message}"
        );
        assert!(message.contains("cause: cpu"), "{message}");
        // The culprit is the most frequent sample's: serde_json's code (called from the
        // round-trip) or, when the samples caught it freeing the parsed `Value` (std's code),
        // the round-trip itself. A trait method's name starts with `<` (`<serde_json::…
        // ::ValueVisitor as serde_core::de::Visitor>::visit_map`).
        assert!(
            message.contains("in: serde_json::")
                || message.contains("in: <serde_json::")
                || message.contains("in: json_service::support::json_app::serde_round_trip"),
            "{message}"
        );
        assert!(message.contains("json_app::serde_round_trip"), "{message}");
    }

    #[tokio::test]
    async fn the_passthrough_variant_passes() {
        let app = app();
        let guard = forbid_blocking();
        assert_eq!(get(app, "/passthrough/{key}").await, StatusCode::OK);
        guard.finish().unwrap();
    }

    #[tokio::test]
    async fn the_offload_variant_passes() {
        let app = app();
        let guard = forbid_blocking();
        assert_eq!(get(app, "/offload/{key}").await, StatusCode::OK);
        guard.finish().unwrap();
    }
}
