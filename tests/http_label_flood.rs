//! Random requests through the HTTP layer of a real server, alone in its own test binary: it
//! measures the process's resident memory, which tests running beside it would disturb.
//!
//! Methods (standard, invented, up to 100,000 bytes), paths (matched, unmatched, long) and header
//! sizes (up to 64 KiB) are random; whatever arrives, a route has at most 16 labels, no label is
//! longer than the cap, and memory stays bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hogwatch::Detector;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

mod common;
use common::resident_bytes;

/// The label cap the recorder enforces (256 bytes, marker included).
const MAX_LABEL_BYTES: usize = hogwatch::MAX_LABEL_BYTES;
/// Nine standard methods and `OTHER`, with room to spare.
const MAX_LABELS_PER_ROUTE: usize = 16;
/// No request may take longer than this: a hung server fails the case.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn app(detector: &Detector) -> Router {
    Router::new()
        .route(
            "/items/{id}",
            get(|| async { "item" }).post(|| async { "posted" }),
        )
        .route("/users/{name}/posts", get(|| async { "posts" }))
        .route("/", get(|| async { "root" }))
        .layer(detector.layer())
}

fn method() -> impl Strategy<Value = Method> {
    let standard = prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::OPTIONS),
        Just(Method::TRACE),
        Just(Method::PATCH),
    ];
    // RFC 9110 token characters; lower case too (`get` is not `GET`).
    let invented = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,40}";
    let long = (1_000usize..100_000).prop_map(|len| "M".repeat(len));
    prop_oneof![
        3 => standard,
        4 => invented.prop_map(|name| Method::from_bytes(name.as_bytes()).unwrap()),
        1 => long.prop_map(|name| Method::from_bytes(name.as_bytes()).unwrap()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "/items/[a-z0-9]{1,12}",
        "/users/[a-z]{1,12}/posts",
        Just("/".to_string()),
        "/[a-zA-Z0-9._~%-]{0,40}(/[a-zA-Z0-9._~-]{0,20}){0,4}",
        (1usize..8_000).prop_map(|len| format!("/items/{}", "x".repeat(len))),
    ]
}

/// Sends one request; its status, or what went wrong.
async fn send(
    address: SocketAddr,
    method: Method,
    path: &str,
    padding: usize,
) -> Result<u16, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"))
        .header("x-padding", "p".repeat(padding))
        .body(Empty::new())
        .map_err(|error| format!("request not built: {error}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|error| format!("no response: {error:?}"))?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("body: {error:?}"))?;
    Ok(status)
}

/// Labels grouped by route: the part after the method (`<unmatched>` and `<other>` stand alone).
fn labels_per_route(detector: &Detector) -> HashMap<String, Vec<String>> {
    let mut routes: HashMap<String, Vec<String>> = HashMap::new();
    for entry in detector.report().entries {
        let route = match entry.label.split_once(' ') {
            Some((_, route)) => route.to_string(),
            None => entry.label.clone(),
        };
        routes.entry(route).or_default().push(entry.label);
    }
    routes
}

#[test]
fn random_methods_paths_and_headers_leave_few_short_labels_and_bounded_memory() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let detector = Detector::builder().build().unwrap();
    let address = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = app(&detector);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        address
    });

    let case = (method(), path(), 0usize..65_536);
    let round = |seed: u8| {
        let config = Config {
            cases: 64,
            failure_persistence: None,
            // Proptest's own per-case timeout would fork or spawn a thread per case; each
            // request is bounded by `REQUEST_TIMEOUT` instead.
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &[seed; 32],
            ),
        );
        runner
            .run(&case, |(method, path, padding)| {
                // The timer is made inside the runtime, which drives it.
                let answer = runtime.block_on(async {
                    tokio::time::timeout(REQUEST_TIMEOUT, send(address, method.clone(), &path, padding))
                        .await
                });
                prop_assert!(
                    answer.is_ok(),
                    "{:.40} {path:.60} with {padding} bytes of header: no answer in {REQUEST_TIMEOUT:?}",
                    method.as_str()
                );
                // Every request is answered with a status: success on a route it matches, or a
                // refusal (no route, a method the route does not take, or a request hyper
                // refuses as malformed or too large). A connection closed or reset without an
                // answer fails the case.
                let answer = answer.unwrap();
                prop_assert!(
                    matches!(answer, Ok(200 | 400 | 404 | 405 | 414 | 431)),
                    "{:.40} {path:.60} with {padding} bytes of header: {answer:?}",
                    method.as_str()
                );
                for (route, labels) in labels_per_route(&detector) {
                    prop_assert!(
                        labels.len() <= MAX_LABELS_PER_ROUTE,
                        "{} labels for {route:.60}",
                        labels.len()
                    );
                    for label in labels {
                        prop_assert!(
                            label.len() <= MAX_LABEL_BYTES,
                            "a {}-byte label: {label:.80}",
                            label.len()
                        );
                    }
                }
                Ok(())
            })
            .unwrap();
    };
    // The first round warms up the allocator, the server's buffers and the label registry; the
    // second, with other random requests, must not grow memory by much: nothing a request
    // brings (its method, path or headers) is kept.
    round(1);
    let after_first = resident_bytes();
    round(2);
    let after_second = resident_bytes();
    let growth = after_second.saturating_sub(after_first);
    eprintln!(
        "RSS after round 1: {} KiB, after round 2: {} KiB, growth {} KiB; labels: {}",
        after_first / 1024,
        after_second / 1024,
        growth / 1024,
        detector.report().entries.len()
    );
    assert!(growth < 8 << 20, "resident memory grew by {growth} bytes");
}
