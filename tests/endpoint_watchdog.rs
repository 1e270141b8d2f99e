//! The stall watchdog through the axum layer: culprit in the report, flame graph at the endpoint.
//!
//! (Its own test binary: in `axum_layer`, the crate's name would itself match the `axum` prefix
//! of the runtime frames and no frame of the test could be a culprit.)
#![cfg(feature = "watchdog")]

mod common;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use hogwatch::{Detector, HogEvent, HogKind};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// Status, content type and body of `GET path`.
async fn get_url(address: SocketAddr, path: &str) -> (u16, String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client
        .get(format!("http://{address}{path}").parse().unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn crunch_entry(address: SocketAddr) -> serde_json::Value {
    let (_, _, body) = get_url(address, "/debug/hogs").await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["label"] == "GET /crunch")
        .cloned()
        .unwrap_or_else(|| panic!("no GET /crunch in {report}"))
}

/// When the watchdog first reported the stall of `GET /crunch`, and the duration it stated (set
/// by the `on_hog` callback).
static CRUNCH_STALLED: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);

/// When the `/crunch` handler started.
static CRUNCH_STARTED: Mutex<Option<Instant>> = Mutex::new(None);

/// `GET /crunch`'s entry once its stack is named; fails after 10 s: the stack is captured while
/// the handler blocks and named by the watchdog's naming thread, which may still be loading the
/// debug information.
async fn named_crunch_entry(address: SocketAddr) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let crunch = crunch_entry(address).await;
        if crunch["top_culprits"][0]["culprit"].is_string() {
            return crunch;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "GET /crunch has no culprit 10 s after its stall: {crunch}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_route_gets_its_culprit_and_a_flame_graph() {
    let threshold = Duration::from_millis(50);
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .watchdog(threshold)
        .on_hog(|event: &HogEvent| {
            if event.kind == HogKind::Stall && &*event.label == "GET /crunch" {
                CRUNCH_STALLED
                    .lock()
                    .unwrap()
                    .get_or_insert((Instant::now(), event.duration));
            }
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/crunch",
            get(|| async {
                CRUNCH_STARTED.lock().unwrap().get_or_insert(Instant::now());
                common::crunch_numbers(Duration::from_millis(300)).to_string()
            }),
        )
        .layer(detector.layer())
        .merge(detector.router());
    let address = serve(app).await;
    // The handler runs on one of this runtime's workers.
    let waiting = common::CpuWaitSince::of(vec![common::this_tid()], &["tokio-rt-worker"]);
    assert_eq!(get_url(address, "/crunch").await.0, 200);
    let stats = detector.watchdog_stats().unwrap();
    assert!(stats.captures_completed > 0, "{stats:?}");
    common::assert_capture_failures(&stats, waiting.waited(), threshold / 4);
    let (at, duration) = CRUNCH_STALLED.lock().unwrap().unwrap_or_else(|| {
        panic!(
            "the stall was reported while the handler blocked: {:?}",
            detector.watchdog_stats()
        )
    });
    // Within three thresholds of the handler's start, by the event and by the clock.
    let bound = 3 * threshold;
    assert!(
        duration <= bound,
        "first reported {duration:?} into the poll"
    );
    let started = CRUNCH_STARTED.lock().unwrap().expect("the handler ran");
    let latency = at.duration_since(started);
    assert!(
        latency <= bound,
        "on_hog got it {latency:?} after the start"
    );

    let crunch = named_crunch_entry(address).await;
    assert_eq!(crunch["stalls"], 1, "one request, one stall: {crunch}");
    let culprit = crunch["top_culprits"][0]["culprit"]
        .as_str()
        .unwrap_or_else(|| panic!("{crunch}"));
    assert!(culprit.contains("crunch_numbers"), "{crunch}");

    let (status, content_type, svg) = get_url(address, "/debug/hogs/flamegraph.svg").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("image/svg+xml"), "{content_type}");
    assert!(svg.contains("<svg") && svg.contains("crunch_numbers"));
    let (status, _, message) = get_url(address, "/debug/hogs/flamegraph.svg?width=9").await;
    assert_eq!(status, 400, "{message}");
}
