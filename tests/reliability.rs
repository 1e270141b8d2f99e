//! Reliability: label floods, faults, hostile input to the endpoint, concurrency and shutdown.
//! The soak run lives in `examples/soak.rs` (see RELIABILITY.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use hogwatch::Detector;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(app: &Router, uri: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_flood_of_distinct_unmatched_uris_is_one_label() {
    let detector = Detector::builder().build().unwrap();
    let app = Router::new()
        .route("/known", get(|| async { "ok" }))
        .layer(detector.layer())
        .merge(detector.router());
    for i in 0..100_000 {
        let (status, _) = call(&app, &format!("/unknown/{i}?q={i}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let report = detector.report();
    assert_eq!(report.entries.len(), 1, "only <unmatched>");
    let unmatched = report.entry("<unmatched>").unwrap();
    assert_eq!(unmatched.requests, 100_000);
    assert_eq!(unmatched.responses.client_error, 100_000);
    assert_eq!(report.folded_labels, 0);
}

fn fault_app(detector: &Detector) -> Router {
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::timeout::TimeoutLayer;

    let panicking = Router::new().route(
        "/panic",
        get(|| async {
            if true {
                panic!("handler bug");
            }
            "unreachable"
        }),
    );
    let slow = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "late"
        }),
    );
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .merge(panicking.clone())
        .layer(detector.layer())
        // Outside the layer: the request future unwinds through hogwatch.
        .layer(CatchPanicLayer::new())
        .merge(
            // Inside the layer: hogwatch sees the 500 that CatchPanicLayer makes of the panic.
            Router::new()
                .route(
                    "/caught",
                    get(|| async {
                        if true {
                            panic!("caught inside");
                        }
                        "unreachable"
                    }),
                )
                .layer(CatchPanicLayer::new())
                .layer(detector.layer()),
        )
        .merge(
            slow.clone()
                .layer(detector.layer())
                // Outside the layer: the timeout drops the request future.
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Duration::from_millis(50),
                )),
        )
        .merge(
            Router::new()
                .route(
                    "/timed",
                    get(|| async {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        "late"
                    }),
                )
                // Inside the layer: hogwatch sees the timeout's response.
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    Duration::from_millis(50),
                ))
                .layer(detector.layer()),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_timeouts_and_disconnects_are_all_accounted_for() {
    let detector = Detector::builder().build().unwrap();
    let app = fault_app(&detector);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let get_status = |path: &'static str| {
        let client = client.clone();
        async move {
            let uri = format!("http://{address}{path}").parse().unwrap();
            client.get(uri).await.map(|response| response.status())
        }
    };
    assert_eq!(get_status("/panic").await.unwrap(), 500);
    assert_eq!(get_status("/caught").await.unwrap(), 500);
    assert_eq!(get_status("/slow").await.unwrap(), 503);
    assert_eq!(get_status("/timed").await.unwrap(), 408);
    // Clients that give up at different points of a slow request. Each one waits until the
    // server has its request: a client aborted before it even sent one (easily, on a loaded
    // machine) is no disconnect for the server to account for.
    let slow_requests = |detector: &Detector| {
        detector
            .report()
            .entry("GET /slow")
            .map_or(0, |entry| entry.requests)
    };
    for i in 0..20u64 {
        let before = slow_requests(&detector);
        let request = tokio::spawn(get_status("/slow"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while slow_requests(&detector) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "request {i} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(i % 5 * 3)).await;
        // (On a slow machine the server's 50 ms timeout may come first: cancelled either way.)
        request.abort();
        let _ = request.await;
    }
    // The server keeps serving.
    assert_eq!(get_status("/ok").await.unwrap(), 200);

    // Wait until every request has ended one way or another.
    let mut report = detector.report();
    for _ in 0..200 {
        report = detector.report();
        let settled = report
            .entries
            .iter()
            .all(|entry| entry.completed + entry.cancelled + entry.panicked == entry.requests);
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for entry in &report.entries {
        assert_eq!(
            entry.completed + entry.cancelled + entry.panicked,
            entry.requests,
            "{}: {entry:?}",
            entry.label
        );
    }
    let panic = report.entry("GET /panic").unwrap();
    assert_eq!((panic.requests, panic.panicked), (1, 1));
    let caught = report.entry("GET /caught").unwrap();
    assert_eq!((caught.completed, caught.responses.server_error), (1, 1));
    let timed = report.entry("GET /timed").unwrap();
    assert_eq!((timed.completed, timed.responses.client_error), (1, 1));
    let slow = report.entry("GET /slow").unwrap();
    assert_eq!(slow.requests, 21);
    assert_eq!(slow.cancelled, 21, "1 timeout and 20 disconnects");
    assert_eq!(report.entry("GET /ok").unwrap().completed, 1);
}

#[test]
fn counts_survive_many_threads_and_concurrent_resets() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    struct Pending;
    impl Future for Pending {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    let detector = Detector::builder().build().unwrap();
    let threads = 8;
    let polls_per_thread = 200_000u64;
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let reader = {
        let (detector, done, seen) = (detector.clone(), done.clone(), seen.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let polls = detector
                    .report_and_reset()
                    .entry("shared")
                    .map_or(0, |entry| entry.polls);
                seen.fetch_add(polls, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let writers: Vec<_> = (0..threads)
        .map(|_| {
            let detector = detector.clone();
            std::thread::spawn(move || {
                let mut future = pin!(detector.watch("shared", Pending));
                let mut cx = Context::from_waker(Waker::noop());
                for _ in 0..polls_per_thread {
                    assert!(future.as_mut().poll(&mut cx).is_pending());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    done.store(true, Ordering::Release);
    reader.join().unwrap();
    let last = detector
        .report_and_reset()
        .entry("shared")
        .map_or(0, |entry| entry.polls);
    assert_eq!(
        seen.load(Ordering::Relaxed) + last,
        threads * polls_per_thread,
        "no poll lost or counted twice across windows"
    );
}

#[test]
fn a_runtime_shut_down_with_watched_tasks_in_flight_neither_hangs_nor_panics() {
    let detector = Detector::builder().build().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..100 {
        runtime.spawn(detector.watch("forever", std::future::pending::<()>()));
        runtime.spawn(detector.watch("sleeping", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }));
    }
    std::thread::sleep(Duration::from_millis(50));
    let started = std::time::Instant::now();
    runtime.shutdown_timeout(Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown hung");
    let report = detector.report();
    assert_eq!(report.entry("forever").unwrap().cancelled, 100);
    assert_eq!(report.entry("sleeping").unwrap().cancelled, 100);
}

mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    fn app(detector: &Detector) -> Router {
        Router::new()
            .route("/users/{id}", get(|| async { "user" }))
            .layer(detector.layer())
            .merge(detector.router())
    }

    /// Labels with everything that could break an encoding.
    fn seed(detector: &Detector) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for label in [
            "quote\"d",
            "back\\slash",
            "new\nline",
            "<script>alert(1)</script>",
            "tab\tand\rreturn",
            "}{\",=",
            "\u{0}nul",
            "ünïcödé \u{202e}",
        ] {
            runtime.block_on(detector.watch(label, async {}));
        }
    }

    /// A light check of the Prometheus text format: every line is a comment or
    /// `name{label="value",...} number`, with values properly escaped.
    fn assert_prometheus(text: &str) {
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
            let Some((name, labels)) = series.split_once('{') else {
                assert!(series
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'));
                continue;
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let labels = labels.strip_suffix('}').expect("closing brace");
            // Walk the label set: key="escaped value" pairs separated by commas.
            let mut chars = labels.chars().peekable();
            while chars.peek().is_some() {
                let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert_eq!(chars.next(), Some('"'), "{line}");
                loop {
                    match chars.next().expect("unterminated value") {
                        '\\' => assert!(matches!(chars.next(), Some('\\' | '"' | 'n')), "{line}"),
                        '"' => break,
                        '\n' => panic!("raw newline in {line}"),
                        _ => {}
                    }
                }
                match chars.next() {
                    Some(',') | None => {}
                    other => panic!("unexpected {other:?} in {line}"),
                }
            }
        }
    }

    fn query_part() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("format=json".to_string()),
            Just("format=text".to_string()),
            Just("format=html".to_string()),
            Just("reset=true".to_string()),
            Just("reset=false".to_string()),
            Just("%FF%FE=%C0".to_string()),
            Just("format".to_string()),
            Just("=".to_string()),
            Just("&&".to_string()),
            "[a-z%=&+;<>\"'\\\\]{0,12}",
            any::<String>().prop_map(|text| text.replace(['#', ' '], "")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn the_endpoint_answers_200_or_400_and_keeps_every_encoding_intact(
            parts in proptest::collection::vec(query_part(), 0..4),
            suffix in prop_oneof![Just(""), Just("/metrics")],
        ) {
            let detector = Detector::builder().build().unwrap();
            seed(&detector);
            let app = app(&detector);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let query: String = parts.join("&");
            let encoded: String = query
                .chars()
                .map(|c| if c.is_ascii_graphic() { c.to_string() } else {
                    let mut buffer = [0u8; 4];
                    c.encode_utf8(&mut buffer).bytes().map(|b| format!("%{b:02X}")).collect()
                })
                .collect();
            let uri = format!("/debug/hogs{suffix}?{encoded}");
            let Ok(request) = Request::get(&uri).body(Body::empty()) else {
                // Not a URI http accepts at all: nothing reaches the endpoint.
                return Ok(());
            };
            let response = runtime.block_on(app.oneshot(request)).unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|value| value.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = runtime.block_on(response.into_body().collect()).unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).expect("UTF-8 body");
            prop_assert!(status == 200 || status == 400, "{uri}: {status} {body}");
            // Every answer's type is one of the endpoint's five, and its body is what that type
            // says: anything else fails.
            match (status.as_u16(), content_type.as_str()) {
                (400, "text/plain; charset=utf-8") => {
                    prop_assert_eq!(body.trim_end().lines().count(), 1, "{}", body);
                }
                (200, "application/json") => {
                    let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
                    prop_assert_eq!(json["entries"].as_array().map(Vec::len), Some(8), "{}", body);
                }
                (200, "text/plain; version=0.0.4; charset=utf-8") => assert_prometheus(&body),
                (200, "text/html; charset=utf-8") => {
                    prop_assert!(body.starts_with("<!DOCTYPE html>"), "{}", body);
                    prop_assert!(!body.contains("<script>alert(1)"));
                }
                (200, "text/plain; charset=utf-8") => {
                    // The text report: a header, then one row per label, each escaped.
                    prop_assert!(body.starts_with("hogwatch: threshold "), "{}", body);
                    prop_assert!(body.contains(", 8 labels, "), "{}", body);
                    prop_assert!(body.contains("new\\nline"), "{}", body);
                    prop_assert!(
                        !body.contains("new\nline") && !body.contains('\u{202e}'),
                        "a label unescaped: {}",
                        body
                    );
                }
                (status, other) => {
                    prop_assert!(false, "{uri}: {status} with content type {other:?}: {body}");
                }
            }
        }

        #[test]
        fn paths_under_debug_hogs_never_fail_the_server(path in "[a-zA-Z0-9/._%-]{0,24}") {
            let detector = Detector::builder().build().unwrap();
            let app = app(&detector);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let Ok(request) = Request::get(format!("/debug/hogs/{path}")).body(Body::empty()) else {
                return Ok(());
            };
            let status = runtime.block_on(app.oneshot(request)).unwrap().status();
            prop_assert!(status == 200 || status == 400 || status == 404, "{path}: {status}");
        }
    }
}
