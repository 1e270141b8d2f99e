//! The stall watchdog through the axum layer: culprit in the report, flame graph at the endpoint.
//!
//! (Its own test binary: in `axum_layer`, the crate's name would itself match the `axum` prefix
//! of the runtime frames and no frame of the test could be a culprit.)
#![cfg(feature = "watchdog")]

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hogwatch::Detector;
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

#[inline(never)]
fn crunch_numbers(duration: Duration) -> u64 {
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed() < duration {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_route_gets_its_culprit_and_a_flame_graph() {
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .watchdog(Duration::from_millis(50))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/crunch",
            get(|| async { crunch_numbers(Duration::from_millis(300)).to_string() }),
        )
        .layer(detector.layer())
        .merge(detector.router());
    let address = serve(app).await;
    assert_eq!(get_url(address, "/crunch").await.0, 200);

    // The watchdog names the culprit on its own thread, after the capture: give it time.
    let mut crunch = crunch_entry(address).await;
    for _ in 0..100 {
        if crunch["stalls"].as_u64().unwrap() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        crunch = crunch_entry(address).await;
    }
    assert!(crunch["stalls"].as_u64().unwrap() >= 1, "{crunch}");
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
