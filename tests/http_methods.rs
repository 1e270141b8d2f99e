//! Route labels under invented HTTP methods, on a real server: a client picks the method, so
//! it must not pick the labels (issue 14).

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use hogwatch::Detector;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `method path` and returns the status.
async fn send(client: &HttpClient, address: SocketAddr, method: Method, path: &str) -> u16 {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

fn app(detector: &Detector) -> Router {
    Router::new()
        .route("/route", get(|| async { "route" }))
        .route("/late", get(|| async { "late" }))
        .layer(detector.layer())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_fold_into_one_label_and_a_later_route_gets_its_own() {
    // The default max_labels (1024): 1,500 invented methods filled it on the old layer.
    let detector = Detector::builder().build().unwrap();
    let address = serve(app(&detector)).await;
    let client = client();
    for i in 0..1_500 {
        let method = Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        assert_eq!(send(&client, address, method, "/route").await, 405);
    }
    assert_eq!(send(&client, address, Method::GET, "/late").await, 200);

    let report = detector.report();
    let labels: Vec<&str> = report.entries.iter().map(|e| e.label.as_str()).collect();
    let late = report
        .entry("GET /late")
        .unwrap_or_else(|| panic!("GET /late has no entry of its own: {labels:?}"));
    assert_eq!(late.requests, 1);
    assert_eq!(report.folded_labels, 0, "{labels:?}");
    let other = report.entry("OTHER /route").expect("OTHER /route");
    assert_eq!(other.requests, 1_500);
    assert_eq!(other.responses.client_error, 1_500);
    assert_eq!(labels.len(), 2, "{labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_000_byte_method_makes_no_long_label() {
    let detector = Detector::builder().build().unwrap();
    let address = serve(app(&detector)).await;
    let client = client();
    let long = Method::from_bytes("M".repeat(100_000).as_bytes()).unwrap();
    assert_eq!(send(&client, address, long, "/route").await, 405);
    assert_eq!(send(&client, address, Method::GET, "/route").await, 200);

    let report = detector.report();
    let labels: Vec<String> = report
        .entries
        .iter()
        .map(|e| e.label.chars().take(40).collect())
        .collect();
    assert!(
        report.entries.iter().all(|entry| entry.label.len() <= 64),
        "a label longer than 64 bytes: {labels:?}"
    );
    assert_eq!(report.entry("OTHER /route").unwrap().requests, 1);
    assert_eq!(report.entry("GET /route").unwrap().requests, 1);
    let debug = serve(detector.router()).await;
    let request = Request::get(format!("http://{debug}/debug/hogs/metrics"))
        .body(Empty::new())
        .unwrap();
    let body = client.request(request).await.unwrap().into_body();
    let metrics = body.collect().await.unwrap().to_bytes();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("OTHER /route"), "{metrics:.2000}");
    assert!(
        metrics.len() < 20_000,
        "every scrape repeats the labels: {} bytes",
        metrics.len()
    );
}

/// A route template longer than the label cap (256 bytes) gets a label cut at the cap, ending
/// in the cut marker, so no route can make a label that every scrape repeats in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_route_template_is_cut_to_the_label_cap() {
    let detector = Detector::builder().build().unwrap();
    let template = format!("/{}", "a".repeat(600));
    let app = Router::new()
        .route(&template, get(|| async { "ok" }))
        .layer(detector.layer());
    let address = serve(app).await;
    assert_eq!(send(&client(), address, Method::GET, &template).await, 200);
    let report = detector.report();
    let label = &report.entries[0].label;
    assert!(label.starts_with("GET /aaa"), "{label}");
    assert!(label.ends_with(hogwatch::CUT_MARKER), "{label}");
    assert!(
        label.len() <= hogwatch::MAX_LABEL_BYTES,
        "{} bytes",
        label.len()
    );
}
