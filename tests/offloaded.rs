//! Intentional blocking is never a hog: under load, a route that blocks inside
//! `tokio::task::block_in_place` and one that awaits `spawn_blocking` have no slow poll and no
//! stall, while a route calling `std::thread::sleep` beside them is flagged on every request.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use hogwatch::Detector;
use tower::ServiceExt;

const BLOCK: Duration = Duration::from_millis(200);
/// Requests per route, all in flight at once.
const REQUESTS: usize = 12;

#[inline(never)]
fn sleep_here(duration: Duration) {
    std::thread::sleep(duration);
    std::hint::black_box(1u8);
}

fn app(detector: &Detector) -> Router {
    Router::new()
        .route(
            "/block_in_place",
            get(|| async {
                tokio::task::block_in_place(|| sleep_here(BLOCK));
                "done"
            }),
        )
        .route(
            "/spawn_blocking",
            get(|| async {
                tokio::task::spawn_blocking(|| sleep_here(BLOCK))
                    .await
                    .unwrap();
                "done"
            }),
        )
        .route(
            "/sleep",
            get(|| async {
                sleep_here(BLOCK);
                "done"
            }),
        )
        .layer(detector.layer())
}

#[test]
fn block_in_place_and_spawn_blocking_are_never_hogs_and_a_sleep_always_is() {
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .watchdog(Duration::from_millis(50))
        .build()
        .unwrap();
    let waiting = common::runtime_threads();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = app(&detector);
    runtime.block_on(async {
        let mut requests = Vec::new();
        for _ in 0..REQUESTS {
            for route in ["/block_in_place", "/spawn_blocking", "/sleep"] {
                let app = app.clone();
                requests.push(tokio::spawn(async move {
                    let request = Request::get(route).body(Body::empty()).unwrap();
                    app.oneshot(request).await.unwrap().status()
                }));
            }
        }
        for request in requests {
            assert!(request.await.unwrap().is_success());
        }
    });
    let report = detector.report();
    let text = report.to_text();
    for route in ["GET /block_in_place", "GET /spawn_blocking"] {
        let entry = report.entry(route).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(entry.requests, REQUESTS as u64, "{text}");
        assert_eq!((entry.slow_polls, entry.stalls), (0, 0), "{route}:\n{text}");
    }
    let sleep = report.entry("GET /sleep").unwrap();
    assert_eq!(sleep.requests, REQUESTS as u64, "{text}");
    assert_eq!(sleep.slow_polls, REQUESTS as u64, "{text}");
    assert_eq!(sleep.stalls, REQUESTS as u64, "{text}");
    common::assert_captures(&detector, &waiting);
}
