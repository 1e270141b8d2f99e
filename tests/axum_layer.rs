//! The axum layer and the /debug/hogs endpoint, on a real server with a real HTTP client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hogwatch::Detector;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long `/block` blocks its worker and `/async` sleeps without blocking: far above the
/// thresholds the tests use, so the verdicts do not depend on how busy the machine is.
const BLOCK: Duration = Duration::from_millis(250);

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

async fn get_url(address: SocketAddr, path_and_query: &str) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{address}{path_and_query}").parse().unwrap();
    let response = client.get(uri).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn report(address: SocketAddr) -> serde_json::Value {
    let answer = get_url(address, "/debug/hogs").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

fn entry<'a>(report: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["label"] == label)
        .unwrap_or_else(|| panic!("no entry {label} in {report}"))
}

fn detector(threshold_ms: u64) -> Detector {
    Detector::builder()
        .threshold(Duration::from_millis(threshold_ms))
        .build()
        .unwrap()
}

fn app(detector: &Detector) -> Router {
    Router::new()
        .route(
            "/block",
            get(|| async {
                std::thread::sleep(BLOCK);
                "done"
            }),
        )
        .route(
            "/async",
            get(|| async {
                tokio::time::sleep(BLOCK).await;
                "done"
            }),
        )
        .route(
            "/items/{id}",
            get(|axum::extract::Path(id): axum::extract::Path<u32>| async move { id.to_string() }),
        )
        .layer(detector.layer())
        .merge(detector.router())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_route_is_flagged_and_an_async_one_is_not() {
    // 100 ms: far below the 250 ms block and the 250 ms async sleep (its wall time), far above
    // what a busy CI machine adds to a short poll.
    let detector = detector(100);
    let address = serve(app(&detector)).await;
    assert_eq!(get_url(address, "/block").await.status, 200);
    assert_eq!(get_url(address, "/async").await.status, 200);

    let report = report(address).await;
    let block = entry(&report, "GET /block");
    assert_eq!(
        block["slow_polls"], 1,
        "one request, one blocking poll: {report}"
    );
    let block_us = BLOCK.as_micros() as u64;
    assert!(block["max_poll_us"].as_u64().unwrap() >= block_us);
    let not_blocking = entry(&report, "GET /async");
    assert_eq!(not_blocking["slow_polls"], 0, "{report}");
    assert!(not_blocking["wall_us"].as_u64().unwrap() >= block_us);
    assert_eq!(report["entries"][0]["label"], "GET /block", "worst first");
    assert!(
        report["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| !entry["label"].as_str().unwrap().contains("/debug/hogs")),
        "the endpoint does not watch itself: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_ids_make_one_route_entry() {
    let detector = detector(10);
    let address = serve(app(&detector)).await;
    let mut workers = Vec::new();
    for worker in 0..20u32 {
        workers.push(tokio::spawn(async move {
            for i in 0..10u32 {
                let id = worker * 10 + i;
                let answer = get_url(address, &format!("/items/{id}")).await;
                assert_eq!(answer.status, 200);
                assert_eq!(answer.body, id.to_string());
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let report = report(address).await;
    let items: Vec<_> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["label"].as_str().unwrap().contains("/items"))
        .collect();
    assert_eq!(items.len(), 1, "{report}");
    let items = items[0];
    assert_eq!(items["label"], "GET /items/{id}");
    assert_eq!(items["requests"], 200);
    assert_eq!(items["completed"], 200);
    assert_eq!(items["responses"]["2xx"], 200);
    assert!(items["polls"].as_u64().unwrap() >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_requests_are_one_label_counted_as_4xx() {
    let detector = detector(10);
    let address = serve(app(&detector)).await;
    for path in ["/nope", "/also/nope", "/items/1/extra"] {
        assert_eq!(get_url(address, path).await.status, 404);
    }
    let report = report(address).await;
    let unmatched = entry(&report, "<unmatched>");
    assert_eq!(unmatched["requests"], 3);
    assert_eq!(unmatched["responses"]["4xx"], 3);
    assert_eq!(unmatched["responses"]["2xx"], 0);
}

/// Requests the router's fallback answers (a static file server's 200s) get `GET <fallback>`;
/// only the ones it answers 404 stay `<unmatched>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_answers_have_their_own_label_and_404s_stay_unmatched() {
    let detector = detector(10);
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .fallback(|uri: axum::http::Uri| async move {
            match uri.path().strip_prefix("/static/") {
                Some(file) => (axum::http::StatusCode::OK, format!("contents of {file}")),
                None => (
                    axum::http::StatusCode::NOT_FOUND,
                    "no such file".to_string(),
                ),
            }
        })
        .layer(detector.layer())
        .merge(detector.router());
    let address = serve(app).await;
    for file in ["app.js", "style.css", "logo.svg"] {
        let answer = get_url(address, &format!("/static/{file}")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    for path in ["/nope", "/also/nope"] {
        assert_eq!(get_url(address, path).await.status, 404);
    }
    let report = report(address).await;
    let fallback = entry(&report, "GET <fallback>");
    assert_eq!(fallback["requests"], 3, "{fallback}");
    assert_eq!(fallback["completed"], 3, "{fallback}");
    assert_eq!(fallback["responses"]["2xx"], 3, "{fallback}");
    let unmatched = entry(&report, "<unmatched>");
    assert_eq!(unmatched["requests"], 2, "{unmatched}");
    assert_eq!(unmatched["responses"]["4xx"], 2, "{unmatched}");
    assert_eq!(unmatched["responses"]["2xx"], 0, "{unmatched}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_routers_route_layers_and_fallbacks_are_labelled() {
    let detector = detector(10);
    let api = Router::new().route("/users/{id}", get(|| async { "user" }));
    let app = Router::new()
        .nest("/api", api)
        .route(
            "/teapot",
            get(|| async { (axum::http::StatusCode::IM_A_TEAPOT, "short and stout") }),
        )
        .route_layer(detector.layer())
        .merge(
            Router::new()
                .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "custom 404") })
                .layer(detector.layer()),
        )
        .merge(detector.router());
    let address = serve(app).await;
    assert_eq!(get_url(address, "/api/users/7").await.status, 200);
    assert_eq!(get_url(address, "/teapot").await.status, 418);
    let missing = get_url(address, "/missing").await;
    assert_eq!((missing.status, missing.body.as_str()), (404, "custom 404"));

    let report = report(address).await;
    assert_eq!(entry(&report, "GET /api/users/{id}")["responses"]["2xx"], 1);
    assert_eq!(entry(&report, "GET /teapot")["responses"]["4xx"], 1);
    assert_eq!(entry(&report, "<unmatched>")["requests"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_and_reset() {
    let detector = detector(10);
    let address = serve(app(&detector)).await;
    get_url(address, "/items/1").await;
    let text = get_url(address, "/debug/hogs?format=text").await;
    assert_eq!(text.status, 200);
    assert!(text.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(text.body.contains("GET /items/{id}"), "{}", text.body);

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let reset = hyper::Request::post(format!("http://{address}/debug/hogs/reset"))
        .body(Empty::new())
        .unwrap();
    let before = client.request(reset).await.unwrap();
    assert_eq!(before.status(), 200);
    let before = before.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&before).contains("GET /items/{id}"));
    let after = report(address).await;
    assert!(
        after["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| entry["label"] != "GET /items/{id}"),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_a_400_naming_the_parameter() {
    let detector = detector(10);
    let address = serve(app(&detector)).await;
    for (path, named) in [
        ("/debug/hogs?frmat=text", "frmat"),
        ("/debug/hogs?format=yaml", "format"),
        ("/debug/hogs?reset=true", "POST /debug/hogs/reset"),
        ("/debug/hogs?format=text&format=json", "format"),
        ("/debug/hogs?format=%FF%FE", "format"),
        ("/debug/hogs/metrics?verbose=1", "verbose"),
    ] {
        let answer = get_url(address, path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert!(answer.body.contains(named), "{path}: {}", answer.body);
        assert_eq!(answer.body.trim_end().lines().count(), 1, "{}", answer.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_is_off_by_default_and_parses_when_on() {
    let quiet = detector(10);
    let address = serve(app(&quiet)).await;
    let answer = get_url(address, "/block").await;
    assert!(answer.headers.get("server-timing").is_none());

    let telling = Detector::builder()
        .threshold(Duration::from_millis(10))
        .server_timing(true)
        .build()
        .unwrap();
    let address = serve(app(&telling)).await;
    let answer = get_url(address, "/block").await;
    let header = answer.headers["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    let mut metrics = std::collections::HashMap::new();
    for metric in header.split(',') {
        let mut parts = metric.trim().split(';');
        let name = parts.next().unwrap().to_string();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{header}"
        );
        let params: Vec<(String, String)> = parts
            .map(|param| {
                let (key, value) = param.split_once('=').unwrap();
                (key.to_string(), value.trim_matches('"').to_string())
            })
            .collect();
        metrics.insert(name, params);
    }
    let dur = |name: &str| -> f64 {
        metrics[name]
            .iter()
            .find(|(key, _)| key == "dur")
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    let block_ms = BLOCK.as_secs_f64() * 1e3;
    assert!(dur("hog-busy") >= block_ms, "{header}");
    assert!(dur("hog-longest-poll") >= block_ms, "{header}");
    assert!(metrics.contains_key("hog-polls"), "{header}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_is_counted_as_cancelled() {
    let detector = detector(10);
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .layer(detector.layer());
    let address = serve(app).await;
    let client = tokio::spawn(async move { get_url(address, "/slow").await.status });
    // Abort only once the server has the request: a client aborted before it sent one (easily,
    // on a loaded machine) is no disconnect for the layer to count.
    let slow = || detector.report().entry("GET /slow").cloned();
    common::wait_until("GET /slow arrived", || {
        slow().is_some_and(|slow| slow.requests >= 1)
    })
    .await;
    client.abort();
    let _ = client.await;
    common::wait_until("GET /slow cancelled", || {
        slow().is_some_and(|slow| slow.cancelled >= 1)
    })
    .await;
    let slow = slow().unwrap();
    assert_eq!(
        (slow.requests, slow.completed, slow.cancelled),
        (1, 0, 1),
        "{slow:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_output_passes_promtool() {
    let builder = Detector::builder().threshold(Duration::from_millis(10));
    // The watchdog's series too (it catches nothing here: every poll is quick).
    #[cfg(feature = "watchdog")]
    let builder = builder.watchdog(Duration::from_millis(500));
    let detector = builder.build().unwrap();
    let app = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .layer(detector.layer())
        .merge(detector.router());
    let address = serve(app).await;
    get_url(address, "/users/1").await;
    get_url(address, "/nothing-here").await;
    for label in ["quote\"d", "back\\slash", "new\nline", "brace}{", "ünicode"] {
        detector.watch(label, async {}).await;
    }
    let answer = get_url(address, "/debug/hogs/metrics").await;
    assert_eq!(answer.status, 200);
    let metrics = answer.body;
    assert!(
        metrics.contains(
            "hogwatch_poll_duration_seconds_bucket{label=\"GET /users/{id}\",le=\"0.00001\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("hogwatch_responses_total{label=\"<unmatched>\",class=\"4xx\"} 1"));
    assert!(metrics.contains("label=\"quote\\\"d\""));
    assert!(metrics.contains("label=\"new\\nline\""));
    assert!(metrics.contains("hogwatch_threshold_seconds 0.01"));
    assert!(metrics.contains("hogwatch_stalls_total{label=\"GET /users/{id}\"} 0"));
    #[cfg(feature = "watchdog")]
    {
        assert!(metrics.contains("hogwatch_watchdog_threshold_seconds 0.5"));
        assert!(metrics.contains("hogwatch_watchdog_captures_total{result=\"failed\"} 0"));
    }

    common::assert_promtool_accepts(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_the_html_page_with_labels_escaped() {
    let detector = detector(10);
    let address = serve(app(&detector)).await;
    get_url(address, "/block").await;
    detector.watch("<script>alert(1)</script>", async {}).await;

    let page = get_url(address, "/debug/hogs?format=html").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.body.contains("GET /block"));
    assert!(!page.body.contains("<script>alert(1)</script>"));
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = hyper::Request::get(format!("http://{address}/debug/hogs"))
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let json = get_url(address, "/debug/hogs").await;
    assert!(json.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handler_for_every_method_still_labels_by_method() {
    let detector = detector(10);
    let app = Router::new()
        .route("/any", axum::routing::any(|| async { "any" }))
        .layer(detector.layer());
    let address = serve(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for method in ["GET", "POST", "GET", "DELETE"] {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{address}/any"))
            .body(Empty::new())
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 200);
    }
    let report = detector.report();
    assert_eq!(report.entry("GET /any").unwrap().requests, 2);
    assert_eq!(report.entry("POST /any").unwrap().requests, 1);
    assert_eq!(report.entry("DELETE /any").unwrap().requests, 1);
}

#[cfg(feature = "watchdog")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flame_graph_the_page_links_to_is_served() {
    let detector = Detector::builder()
        .watchdog(Duration::from_millis(500))
        .build()
        .unwrap();
    let address = serve(app(&detector)).await;
    detector.watch("quick", async {}).await;
    let page = get_url(address, "/debug/hogs?format=html").await;
    assert!(
        page.body.contains("href=\"hogs/flamegraph.svg\""),
        "{}",
        page.body
    );
    let svg = get_url(address, "/debug/hogs/flamegraph.svg").await;
    assert_eq!(svg.status, 200);
    assert_eq!(svg.headers["content-type"], "image/svg+xml");
    assert!(svg.body.contains("<svg"), "{}", svg.body);
    let bad = get_url(address, "/debug/hogs/flamegraph.svg?x=1").await;
    assert_eq!(bad.status, 400);
}
