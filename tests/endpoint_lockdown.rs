//! The /debug/hogs endpoint against a web page the operator happens to open (issue 14): every
//! answer is marked `nosniff` and `no-store`, the page runs only its own style and script, and
//! only a `POST` from outside a browser's other sites resets the figures.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use hogwatch::Detector;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

async fn send(address: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"));
    for &(name, value) in headers {
        request = request.header(name, value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .map(|value| value.to_str().unwrap())
        .unwrap_or_default()
}

fn app(detector: &Detector) -> Router {
    Router::new()
        .route("/work", get(|| async { "done" }))
        .layer(detector.layer())
        .merge(detector.router())
}

/// Whether `/debug/hogs` still shows the `GET /work` request, that is, nothing was reset.
async fn work_is_counted(address: SocketAddr) -> bool {
    let report = send(address, Method::GET, "/debug/hogs", &[]).await;
    assert_eq!(report.status, 200);
    report.body.contains("\"GET /work\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_nosniff_no_store_and_the_page_runs_only_its_own_code() {
    let detector = Detector::builder().build().unwrap();
    let address = serve(app(&detector)).await;
    assert_eq!(send(address, Method::GET, "/work", &[]).await.status, 200);

    let mut answers = vec![
        ("/debug/hogs", Method::GET, 200),
        ("/debug/hogs?format=text", Method::GET, 200),
        ("/debug/hogs?format=html", Method::GET, 200),
        ("/debug/hogs/metrics", Method::GET, 200),
        ("/debug/hogs?format=yaml", Method::GET, 400),
        ("/debug/hogs", Method::DELETE, 405),
        ("/debug/hogs/reset", Method::GET, 405),
        ("/debug/hogs/reset", Method::POST, 200),
    ];
    if cfg!(feature = "watchdog") {
        answers.push(("/debug/hogs/flamegraph.svg", Method::GET, 200));
    }
    for (path, method, status) in answers {
        let answer = send(address, method.clone(), path, &[]).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        assert_eq!(
            header(&answer, "x-content-type-options"),
            "nosniff",
            "{method} {path}"
        );
        assert_eq!(
            header(&answer, "cache-control"),
            "no-store",
            "{method} {path}"
        );
        let policy = header(&answer, "content-security-policy");
        assert!(
            policy.starts_with("default-src 'none';"),
            "{method} {path}: {policy:?}"
        );
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{method} {path}: {policy:?}"
        );
        if path.ends_with("format=html") {
            // The page's own style and script by hash, its refresh, nothing else.
            assert!(answer.body.contains("<style>") && answer.body.contains("<script>"));
            assert!(policy.contains("style-src 'sha256-"), "{policy}");
            assert!(policy.contains("script-src 'sha256-"), "{policy}");
            assert!(policy.contains("connect-src 'self'"), "{policy}");
            assert!(!policy.contains("unsafe"), "{policy}");
        } else {
            assert_eq!(policy, "default-src 'none'; frame-ancestors 'none'");
        }
    }
    // The application's own answers are its business: the lockdown stays on the debug routes.
    let unmatched = send(address, Method::GET, "/nowhere", &[]).await;
    assert_eq!(unmatched.status, 404);
    assert!(unmatched.headers.get("content-security-policy").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_never_resets_and_a_post_does() {
    let detector = Detector::builder().build().unwrap();
    let address = serve(app(&detector)).await;
    assert_eq!(send(address, Method::GET, "/work", &[]).await.status, 200);

    // What an `<img src=".../debug/hogs?reset=true">` on any page used to do.
    let refused = send(address, Method::GET, "/debug/hogs?reset=true", &[]).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(
        refused.body.trim_end().lines().count(),
        1,
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("POST /debug/hogs/reset"),
        "{}",
        refused.body
    );
    assert!(work_is_counted(address).await, "a GET reset the figures");

    // A hidden form or a no-cors fetch on another site's page: the browser says where it is from.
    for headers in [
        &[("origin", "https://evil.example")][..],
        &[("sec-fetch-site", "cross-site")],
        &[("origin", "null")],
    ] {
        let refused = send(address, Method::POST, "/debug/hogs/reset", headers).await;
        assert_eq!(refused.status, 403, "{headers:?}: {}", refused.body);
        assert_eq!(refused.body.trim_end().lines().count(), 1);
        assert!(
            work_is_counted(address).await,
            "{headers:?} reset the figures"
        );
    }

    // curl -X POST: the report of the window that ends, then a new window.
    let reset = send(address, Method::POST, "/debug/hogs/reset", &[]).await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert!(header(&reset, "content-type").starts_with("application/json"));
    let ended: serde_json::Value = serde_json::from_str(&reset.body).unwrap();
    let work = ended["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["label"] == "GET /work")
        .unwrap_or_else(|| panic!("{ended}"));
    assert_eq!(work["requests"], 1);
    assert!(!work_is_counted(address).await, "the POST did not reset");

    let text = send(address, Method::POST, "/debug/hogs/reset?format=text", &[]).await;
    assert_eq!(text.status, 200);
    assert!(header(&text, "content-type").starts_with("text/plain"));
    // The page belongs at GET /debug/hogs: its refresh and links are relative to it.
    let html = send(address, Method::POST, "/debug/hogs/reset?format=html", &[]).await;
    assert_eq!(html.status, 400, "{}", html.body);
}
