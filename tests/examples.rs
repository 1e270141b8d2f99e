//! The services of the classic-experiment examples (`examples/json_service.rs`,
//! `examples/scoring.rs`), on real servers at small sizes: hogwatch's verdicts, the delay each
//! route inflicted, the status codes and the bodies. Verdicts and ratios far apart, not timings:
//! the thresholds sit far below the blocking routes' polls (a 2 MB JSON round-trip, two 45 ms
//! blocking calls) and far above everything the other routes do on the executor, so the
//! verdicts hold in debug builds on a busy 2-core machine.
//!
//! The examples' support modules are compiled in here too, so the unit tests of
//! `examples/support/documents.rs` run with `cargo test`.

#[path = "../examples/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hogwatch::{Builder, Detector, Report};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::documents::{self, Size};
use support::json_app::{self, Cache};
use support::load::{Canary, Load, LoadResult};
use support::scoring_app::{self, ModelService, ScoreRequest, Scores};

/// Far below a 2 MB round-trip (hundreds of milliseconds in debug; 25 to 55 ms in release, so
/// 10 ms there: at 30 ms a release run flagged `/simd` on none of its 20 requests) and a `sync`
/// scoring request (~90 ms); far above a short poll preempted once by the scheduler.
const THRESHOLD: Duration = match cfg!(debug_assertions) {
    true => Duration::from_millis(30),
    false => Duration::from_millis(10),
};

/// After the last request, before the report: a late wake-up of the lag probe is charged two
/// thresholds plus 50 ms after it ends (110 ms here in debug), and more.
const SETTLE: Duration = Duration::from_millis(300);

/// The lag probe is on, as in the examples: without it every inflicted delay is 0.
fn detector() -> Detector {
    Detector::builder()
        .threshold(THRESHOLD)
        .lag_probe(Builder::DEFAULT_LAG_RESOLUTION)
        .build()
        .unwrap()
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Bytes,
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: Bytes) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, Bytes::new()).await
}

fn assert_all_ok(what: &str, result: &LoadResult, requests: u64) {
    assert_eq!(result.requests, requests, "{what}: {result:?}");
    assert!(result.all_ok(), "{what}: non-2xx or errors: {result:?}");
}

/// Slow polls a route that does not block may still show: the OS can take a worker away
/// mid-poll for longer than the threshold (both workers busy with debug-build JSON, on a shared
/// 2-core machine). hogwatch does not yet say which slow polls were preemption, so a small fixed
/// number is allowed, however many requests the route served.
const PREEMPTED_POLLS: u64 = 2;

/// Asserts the verdict on `label`: flagged (a slow poll in at least 90 % of its requests) or not
/// (at most `PREEMPTED_POLLS` slow polls), every request answered 2xx.
fn assert_verdict(report: &Report, label: &str, flagged: bool) {
    let entry = report
        .entry(label)
        .unwrap_or_else(|| panic!("no entry {label}:\n{}", report.to_text()));
    // A request's polls are counted once each: a blocking request has at least one slow poll.
    let flagged_requests = entry.slow_polls.min(entry.requests);
    if flagged {
        assert!(
            flagged_requests * 10 >= entry.requests * 9,
            "{label} flagged on {} of {} requests\n{}",
            entry.slow_polls,
            entry.requests,
            report.to_text()
        );
    } else {
        assert!(
            entry.slow_polls <= PREEMPTED_POLLS,
            "{label} flagged: {} slow polls in {} requests\n{}",
            entry.slow_polls,
            entry.requests,
            report.to_text()
        );
    }
    assert!(entry.requests > 0, "{label}: no requests");
    assert_eq!(entry.responses.success, entry.requests, "{label}");
    assert_eq!(entry.responses.non_success(), 0, "{label}");
}

/// The inflicted delay of `label`, in microseconds; 0 if it has no entry.
fn inflicted(report: &Report, label: &str) -> u64 {
    report
        .entry(label)
        .map_or(0, |entry| entry.inflicted_delay_us)
}

/// Every label's inflicted delay and the probe's, for a failure message.
fn delays(report: &Report) -> String {
    let mut text: String = report
        .entries
        .iter()
        .map(|entry| format!("{}: {} µs\n", entry.label, entry.inflicted_delay_us))
        .collect();
    if let Some(lag) = &report.event_loop_lag {
        text += &format!(
            "probe: {} µs delay, {} µs unattributed\n",
            lag.delay_us, lag.unattributed_delay_us
        );
    }
    text
}

/// Asserts that each of `culprits` inflicted at least ten times the delay of each of
/// `innocents`, and at least `floor`: ten times nothing is nothing.
fn assert_inflicted_far_more(
    report: &Report,
    culprits: &[&str],
    innocents: &[&str],
    floor: Duration,
) {
    // The figures, for `--nocapture`: what a run saw, pass or fail.
    eprintln!("{}", delays(report));
    let floor = u64::try_from(floor.as_micros()).unwrap();
    for culprit in culprits {
        let charged = inflicted(report, culprit);
        assert!(
            charged >= floor,
            "{culprit} inflicted {charged} µs, under {floor} µs\n{}",
            delays(report)
        );
        for innocent in innocents {
            assert!(
                charged >= 10 * inflicted(report, innocent),
                "{culprit} inflicted under 10 times what {innocent} did\n{}",
                delays(report)
            );
        }
    }
}

/// The experiment at a small size: the four variants in turn on two workers, a canary on
/// `/health` all along. The routes that round-trip on the executor are flagged and are charged
/// the delay; the fixes are neither; the canary's route, the victim, is charged next to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_service_flags_and_charges_the_round_trips_on_the_executor_only() {
    let detector = detector();
    let addr = serve(json_app::app(&detector, Cache::new([Size::Big]))).await;

    let canary = Canary::start(addr, "/health", Duration::from_millis(5));
    for (variant, _) in json_app::VARIANTS {
        // /passthrough answers in microseconds: more requests, so its route sees real traffic.
        let (requests, concurrency) = match variant {
            "passthrough" => (50, 10),
            _ => (20, 4),
        };
        let result = Load::get(addr, &format!("/{variant}/big"))
            .requests(requests)
            .concurrency(concurrency)
            .run()
            .await;
        assert_all_ok(variant, &result, requests);
    }
    let health = canary.stop().await;
    assert!(health.all_ok(), "canary: {health:?}");
    assert!(health.requests > 0, "canary: {health:?}");
    tokio::time::sleep(SETTLE).await;

    let report = detector.report();
    assert_verdict(&report, "GET /blocking/{key}", true);
    assert_verdict(&report, "GET /simd/{key}", true);
    assert_verdict(&report, "GET /offload/{key}", false);
    assert_verdict(&report, "GET /passthrough/{key}", false);
    assert_verdict(&report, "GET /health", false);

    // Twenty round-trips of tens (release) to hundreds (debug) of milliseconds each, on two
    // workers: the runtime is late for seconds; 100 ms is a floor no run comes near.
    assert_inflicted_far_more(
        &report,
        &["GET /blocking/{key}", "GET /simd/{key}"],
        &["GET /passthrough/{key}", "GET /offload/{key}"],
        Duration::from_millis(100),
    );
    let health = inflicted(&report, "GET /health");
    assert!(
        health * 100 < inflicted(&report, "GET /blocking/{key}"),
        "the victim GET /health inflicted {health} µs, 1 % of /blocking's or more\n{}",
        delays(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_service_bodies_match_the_cached_documents() {
    let detector = detector();
    let cache = Cache::all();
    let addr = serve(json_app::app(&detector, cache.clone())).await;
    for size in Size::all() {
        let key = size.key();
        let document = cache.get(key).unwrap();
        assert_eq!(document, documents::document(size).as_bytes());
        let expected: serde_json::Value = serde_json::from_slice(&document).unwrap();

        let passthrough = get(addr, &format!("/passthrough/{key}")).await;
        assert_eq!(passthrough.status, 200);
        assert_eq!(
            passthrough.content_type.as_deref(),
            Some("application/json")
        );
        assert!(passthrough.body == document, "{key}: not byte-identical");

        for variant in ["blocking", "offload", "simd"] {
            let answer = get(addr, &format!("/{variant}/{key}")).await;
            assert_eq!(answer.status, 200, "/{variant}/{key}");
            assert_eq!(answer.content_type.as_deref(), Some("application/json"));
            let value: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            assert!(value == expected, "/{variant}/{key}: a different document");
        }
    }

    for variant in ["blocking", "passthrough", "offload", "simd"] {
        let answer = get(addr, &format!("/{variant}/huge")).await;
        assert_eq!(answer.status, 404, "/{variant}/huge");
    }
    let health = get(addr, "/health").await;
    assert_eq!((health.status, &health.body[..]), (200, &b"ok"[..]));
    let report = get(addr, "/debug/hogs?format=text").await;
    assert_eq!(report.status, 200);
    assert!(String::from_utf8_lossy(&report.body).contains("GET /simd/{key}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_flags_the_blocking_client_only_where_it_blocks_the_executor() {
    let detector = detector();
    let model = ModelService::start(&detector, 8).unwrap();
    let addr = serve(scoring_app::app(&detector, model.addr())).await;
    let body = serde_json::to_vec(&ScoreRequest { customer: 7 }).unwrap();

    let canary = Canary::start(addr, "/health", Duration::from_millis(5));
    for variant in scoring_app::VARIANTS {
        let result = Load::post(
            addr,
            &format!("/{variant}/score"),
            "application/json",
            body.clone(),
        )
        .requests(20)
        .concurrency(4)
        .run()
        .await;
        assert_all_ok(variant, &result, 20);
    }
    let health = canary.stop().await;
    assert!(health.all_ok(), "canary: {health:?}");
    tokio::time::sleep(SETTLE).await;

    let report = detector.report();
    assert_verdict(&report, "POST /sync/score", true);
    assert_verdict(&report, "POST /async/score", false);
    assert_verdict(&report, "POST /fixed-sync/score", false);
    assert_verdict(&report, "GET /health", false);
    // The model service's own verdicts: `thread::sleep` blocks its (separate) executor.
    assert_verdict(&report, "POST /sync/model/predict", true);
    assert_verdict(&report, "POST /fixed-sync/model/predict", true);
    assert_verdict(&report, "POST /async/model/predict", false);
    // Twenty requests holding a worker 90 ms each, on two workers: the runtime is about a second
    // late, charged here. The model routes' sleeps held only the model service's runtime, which
    // the probe does not run on: they delayed nobody on the scoring runtime.
    assert_inflicted_far_more(
        &report,
        &["POST /sync/score"],
        &[
            "POST /async/score",
            "POST /fixed-sync/score",
            "POST /sync/model/predict",
            "POST /fixed-sync/model/predict",
        ],
        Duration::from_millis(100),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_answers_with_both_predictions() {
    let detector = detector();
    let model = ModelService::start(&detector, 4).unwrap();
    let addr = serve(scoring_app::app(&detector, model.addr())).await;
    for variant in scoring_app::VARIANTS {
        for customer in [0, 42, u64::MAX] {
            let body = serde_json::to_vec(&ScoreRequest { customer }).unwrap();
            let answer = send(addr, "POST", &format!("/{variant}/score"), body.into()).await;
            assert_eq!(answer.status, 200, "{variant}");
            let scores: Scores = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(
                scores,
                Scores {
                    customer,
                    fraud: scoring_app::predict("fraud", customer),
                    churn: scoring_app::predict("churn", customer),
                },
                "{variant}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_reports_a_failing_model_service_as_bad_gateway() {
    let detector = detector();
    // Nothing listens here once the model service has stopped.
    let gone = ModelService::start(&detector, 1).unwrap().addr();
    let addr = serve(scoring_app::app(&detector, gone)).await;
    let body = serde_json::to_vec(&ScoreRequest { customer: 1 }).unwrap();
    for variant in scoring_app::VARIANTS {
        let answer = send(
            addr,
            "POST",
            &format!("/{variant}/score"),
            body.clone().into(),
        )
        .await;
        assert_eq!(answer.status, 502, "{variant}");
    }
}
