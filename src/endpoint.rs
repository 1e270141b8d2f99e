//! The `/debug/hogs` endpoint: the report as JSON, text and Prometheus metrics.
//!
//! | request | answer |
//! |---|---|
//! | `GET /debug/hogs` | the [`Report`](crate::Report) as JSON |
//! | `GET /debug/hogs?format=text` | the aligned text table |
//! | `GET /debug/hogs?format=html`, or a browser (`Accept: text/html`) | the HTML page |
//! | `POST /debug/hogs/reset`, `POST /debug/hogs/reset?format=text` | the report of the window that ends (JSON or text), and a new window starts |
//! | `GET /debug/hogs/metrics` | Prometheus text exposition |
//! | `GET /debug/hogs/flamegraph.svg` | a flame graph of the watchdog's stall stacks (feature `watchdog`) |
//!
//! Any unknown, repeated or malformed query parameter is answered with `400 Bad Request` and a
//! one-line message naming it. `GET /debug/hogs?reset=true` (how a reset was asked for before)
//! is a `400` whose message says to send `POST /debug/hogs/reset` instead.
//!
//! The reset answers the report it ends, not a bare confirmation: the figures of the window that
//! just closed are then never lost between a `GET` and a reset, and a script can collect one
//! window after another with nothing else (`curl -X POST .../debug/hogs/reset?format=text`).
//!
//! # Security
//!
//! The endpoint reveals your route names and how long each takes, and `POST /debug/hogs/reset`
//! lets whoever can reach it clear the statistics. Do not expose it to the internet. Either put
//! it behind your authentication layer:
//!
//! ```
//! use axum::{http::StatusCode, middleware, routing::get, Router};
//!
//! async fn require_token(
//!     request: axum::extract::Request,
//!     next: middleware::Next,
//! ) -> Result<axum::response::Response, StatusCode> {
//!     let authorised = request
//!         .headers()
//!         .get("authorization")
//!         .is_some_and(|value| value == "Bearer let-me-in");
//!     if authorised { Ok(next.run(request).await) } else { Err(StatusCode::UNAUTHORIZED) }
//! }
//!
//! # fn main() -> Result<(), hogwatch::ConfigError> {
//! let detector = hogwatch::Detector::builder().build()?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(detector.layer())
//!     .merge(detector.router().route_layer(middleware::from_fn(require_token)));
//! # Ok(()) }
//! ```
//!
//! or serve it on a separate listener bound to localhost only:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let detector = hogwatch::Detector::builder().build()?;
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(detector.layer());
//! let debug: axum::Router = detector.router();
//! let public = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! let private = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! tokio::try_join!(axum::serve(public, app), axum::serve(private, debug))?;
//! # Ok(()) }
//! ```
//!
//! Whoever can reach it, a web page the operator opens must not be able to use it. So:
//! - state changes only through `POST /debug/hogs/reset`: an `<img>` or a link cannot send a
//!   `POST`, and a `POST` that a browser marks as coming from another site (an `Origin` other
//!   than the `Host` asked for, or `Sec-Fetch-Site: cross-site` / `same-site`, as a hidden form
//!   sends) is refused with `403`; `curl` and scripts send neither header;
//! - every response carries `X-Content-Type-Options: nosniff` (a browser never reads the JSON or
//!   text as a page or a script) and `Cache-Control: no-store` (no copy of the figures stays in a
//!   cache);
//! - the HTML page's `Content-Security-Policy` is `default-src 'none'` plus its own inline style
//!   and script, allowed by their SHA-256 hashes, and `connect-src 'self'` for its refresh;
//!   every other response, the flame graph too (a static SVG: no script, no style sheet), is
//!   `default-src 'none'`. None of them may be framed by another site (`frame-ancestors
//!   'none'`).

use axum::extract::RawQuery;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::detector::Detector;
use crate::render;

impl Detector {
    /// The debug endpoint: `GET /debug/hogs` (JSON, `?format=text`), `GET /debug/hogs/metrics`
    /// (Prometheus). See [the endpoint's docs](crate::endpoint) before exposing it.
    ///
    /// ```
    /// use axum::Router;
    ///
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// let app: Router = Router::new().merge(detector.router());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        router(self.clone())
    }
}

/// The formats `GET /debug/hogs` can answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Html,
}

/// What the query string of `GET /debug/hogs` (or `POST /debug/hogs/reset`) asked for.
#[derive(Debug, PartialEq, Eq)]
struct ReportQuery {
    format: Option<Format>,
}

/// A query the endpoint refuses, as a one-line message.
#[derive(Debug, PartialEq, Eq)]
struct BadQuery(String);

impl IntoResponse for BadQuery {
    fn into_response(self) -> Response {
        refuse(StatusCode::BAD_REQUEST, self.0)
    }
}

/// A one-line plain-text refusal.
fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

/// What `GET /debug/hogs?reset=...` answers: resets are a `POST` now.
const RESET_IS_A_POST: &str =
    "query parameter `reset` is not taken: to start a new window, send `POST /debug/hogs/reset`";

/// Shown in messages; user input is escaped so a message stays one printable line.
fn quoted(text: &str) -> String {
    format!("`{}`", text.escape_default())
}

fn parse_report_query(query: Option<&str>) -> Result<ReportQuery, BadQuery> {
    let mut parsed = ReportQuery { format: None };
    for (key, value) in pairs(query)? {
        match key.as_str() {
            "format" if parsed.format.is_none() => {
                parsed.format = Some(match value.as_str() {
                    "json" => Format::Json,
                    "text" => Format::Text,
                    "html" => Format::Html,
                    _ => {
                        return Err(BadQuery(format!(
                        "bad value {} for query parameter `format`: expected json, text or html",
                        quoted(&value)
                    )))
                    }
                })
            }
            "format" => {
                return Err(BadQuery(format!(
                    "query parameter {} is given more than once",
                    quoted(&key)
                )))
            }
            // A GET that changed state could be sent by any `<img>` on any page the operator
            // opens; say what to do instead, whatever the value.
            "reset" => return Err(BadQuery(RESET_IS_A_POST.to_string())),
            _ => return Err(unknown(&key, "format")),
        }
    }
    Ok(parsed)
}

fn unknown(key: &str, known: &str) -> BadQuery {
    BadQuery(format!(
        "unknown query parameter {}: this endpoint takes {known}",
        quoted(key)
    ))
}

/// The decoded `key=value` pairs of a query string.
fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, BadQuery> {
    let Some(query) = query.filter(|query| !query.is_empty()) else {
        return Ok(Vec::new());
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|error| BadQuery(format!("malformed query string: {error}")))?;
    // The decoder replaces invalid UTF-8 with U+FFFD: such a parameter can only be a mistake.
    if let Some((key, _)) = pairs
        .iter()
        .find(|(key, value)| key.contains('\u{FFFD}') || value.contains('\u{FFFD}'))
    {
        return Err(BadQuery(format!(
            "query parameter {} is not valid UTF-8 once decoded",
            quoted(key)
        )));
    }
    Ok(pairs)
}

pub(crate) fn router<S>(detector: Detector) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let for_metrics = detector.clone();
    let for_reset = detector.clone();
    #[cfg(feature = "watchdog")]
    let for_flamegraph = detector.clone();
    // `Router::layer` wraps the routes added so far and the fallback. Layering the empty router
    // watches only its default 404 fallback, not the debug routes added next. That matters
    // because `merge` keeps the *other* router's default fallback: without this, `.layer(..)`
    // followed by `.merge(detector.router())` would leave unmatched requests unwatched.
    let router = Router::new()
        .layer(detector.layer())
        .route(
            "/debug/hogs",
            get(move |query: RawQuery, headers: HeaderMap| {
                let detector = detector.clone();
                off_executor(move || serve_report(&detector, query.0.as_deref(), &headers))
            }),
        )
        .route(
            "/debug/hogs/reset",
            post(move |query: RawQuery, headers: HeaderMap| {
                let detector = for_reset.clone();
                off_executor(move || serve_reset(&detector, query.0.as_deref(), &headers))
            }),
        )
        .route(
            "/debug/hogs/metrics",
            get(move |query: RawQuery| {
                let detector = for_metrics.clone();
                off_executor(move || serve_metrics(&detector, query.0.as_deref()))
            }),
        );
    #[cfg(feature = "watchdog")]
    let router = router.route(
        "/debug/hogs/flamegraph.svg",
        get(move |query: RawQuery| {
            let detector = for_flamegraph.clone();
            off_executor(move || serve_flamegraph(&detector, query.0.as_deref()))
        }),
    );
    // `route_layer`: every answer of the debug routes (their 400s and 405s included), never the
    // fallback, which after `merge` may answer the application's own unmatched requests.
    router.route_layer(axum::middleware::map_response(lock_down))
}

/// Takes the report and renders it on tokio's blocking pool, and awaits the answer. At
/// `max_labels` a report and its page are milliseconds of CPU (about 1 ms and 5 ms at 1,024
/// labels in a release build, `cargo bench --bench report`): on an executor worker that would
/// be the very hog hogwatch reports, on every page refresh and every scrape.
async fn off_executor(work: impl FnOnce() -> Response + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(response) => response,
        // The runtime is shutting down, or the renderer panicked (a bug): say so in one line.
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("hogwatch: the report could not be rendered: {error}\n"),
        )
            .into_response(),
    }
}

/// The policy of every response but the HTML page, the flame graph included: nothing may load
/// or run.
const LOCKED: &str = "default-src 'none'; frame-ancestors 'none'";

/// Adds the headers every answer of the endpoint carries; a handler that set its own
/// `Content-Security-Policy` (the page, the flame graph) keeps it.
async fn lock_down(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(LOCKED),
        );
    }
    response
}

/// Refuses any query parameter on endpoints that take none.
fn no_parameters(query: Option<&str>) -> Result<(), BadQuery> {
    match pairs(query)?.first() {
        None => Ok(()),
        Some((key, _)) => Err(unknown(key, "no parameters")),
    }
}

#[cfg(feature = "watchdog")]
fn serve_flamegraph(detector: &Detector, query: Option<&str>) -> Response {
    if let Err(bad) = no_parameters(query) {
        return bad.into_response();
    }
    respond("image/svg+xml", LOCKED, detector.report().flamegraph_svg())
}

/// A browser asks for `text/html` first; `curl` and scripts get JSON unless they ask.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| media.split(';').next().map(str::trim) == Some("text/html"))
}

fn serve_report(detector: &Detector, query: Option<&str>, headers: &HeaderMap) -> Response {
    match parse_report_query(query) {
        Ok(query) => render_report(&detector.report(), query, headers),
        Err(bad) => bad.into_response(),
    }
}

/// `POST /debug/hogs/reset`: the report of the window that ends, as `GET /debug/hogs` would
/// show it, and a new window.
fn serve_reset(detector: &Detector, query: Option<&str>, headers: &HeaderMap) -> Response {
    if let Some(why) = cross_site(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("a reset from another site is refused ({why}): send it from a script or curl"),
        );
    }
    match parse_report_query(query) {
        // The page's refresh and flame-graph link are relative to `/debug/hogs`: a page answered
        // from here would break both.
        Ok(ReportQuery {
            format: Some(Format::Html),
        }) => BadQuery(
            "a reset answers JSON or text: the HTML page is `GET /debug/hogs?format=html`"
                .to_string(),
        )
        .into_response(),
        // JSON unless asked for text, whatever `Accept` says.
        Ok(query) => render_report(&detector.report_and_reset(), query, &HeaderMap::new()),
        Err(bad) => bad.into_response(),
    }
}

/// Why a browser's request came from another site, if it did: a page the operator opens must
/// not reset the figures with a hidden form or a `fetch(.., {mode: "no-cors"})`. Browsers send
/// `Sec-Fetch-Site` and `Origin` with such a `POST`; `curl` and scripts send neither.
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok());
    if matches!(site, Some("cross-site" | "same-site")) {
        return Some("Sec-Fetch-Site");
    }
    let origin = headers.get(header::ORIGIN)?;
    let host = headers.get(header::HOST);
    // `Origin: http://127.0.0.1:9090` against `Host: 127.0.0.1:9090`; `null` (a sandboxed
    // frame, a file) never matches.
    let same = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .zip(host.and_then(|host| host.to_str().ok()))
        .is_some_and(|((_, authority), host)| authority.eq_ignore_ascii_case(host));
    (!same).then_some("Origin")
}

fn render_report(report: &crate::Report, query: ReportQuery, headers: &HeaderMap) -> Response {
    let default = if wants_html(headers) {
        Format::Html
    } else {
        Format::Json
    };
    match query.format.unwrap_or(default) {
        Format::Json => match serde_json::to_string(report) {
            Ok(json) => respond("application/json", LOCKED, json),
            Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        },
        Format::Text => respond("text/plain; charset=utf-8", LOCKED, report.to_text()),
        Format::Html => respond(
            "text/html; charset=utf-8",
            render::html::csp::page_policy(),
            report.to_html(),
        ),
    }
}

fn serve_metrics(detector: &Detector, query: Option<&str>) -> Response {
    if let Err(bad) = no_parameters(query) {
        return bad.into_response();
    }
    respond(
        "text/plain; version=0.0.4; charset=utf-8",
        LOCKED,
        detector.report().to_prometheus(),
    )
}

/// A `200` with `body`; `policy` is its `Content-Security-Policy` (`lock_down` adds the rest).
fn respond(content_type: &'static str, policy: &'static str, body: String) -> Response {
    let policy = HeaderValue::from_static(policy);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, policy),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_or_name_the_bad_parameter() {
        assert_eq!(
            parse_report_query(None).unwrap(),
            ReportQuery { format: None }
        );
        assert_eq!(
            parse_report_query(Some("format=text")).unwrap(),
            ReportQuery {
                format: Some(Format::Text)
            }
        );
        for (query, named) in [
            ("frmat=text", "frmat"),
            ("format=xml", "format"),
            ("format=text&format=json", "format"),
            ("%FF=1", "\\u{fffd}"),
            ("format=%C0", "format"),
        ] {
            let BadQuery(message) = parse_report_query(Some(query)).unwrap_err();
            assert!(message.contains(named), "{query}: {message}");
            assert!(!message.contains('\n'), "{query}: {message}");
        }
        for query in [
            "reset=true",
            "reset=1",
            "format=text&reset=false",
            "reset=maybe",
        ] {
            let BadQuery(message) = parse_report_query(Some(query)).unwrap_err();
            assert_eq!(message, RESET_IS_A_POST, "{query}");
        }
    }

    #[test]
    fn a_reset_from_another_site_is_recognised() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for &(name, value) in pairs {
                map.insert(name, HeaderValue::from_static(value));
            }
            map
        };
        // curl, a script, the page's own origin.
        assert_eq!(cross_site(&headers(&[("host", "127.0.0.1:9090")])), None);
        assert_eq!(
            cross_site(&headers(&[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://127.0.0.1:9090"),
                ("sec-fetch-site", "same-origin"),
            ])),
            None
        );
        // A form on another page, with and without fetch metadata.
        for pairs in [
            &[
                ("host", "127.0.0.1:9090"),
                ("origin", "https://evil.example"),
            ][..],
            &[("host", "127.0.0.1:9090"), ("origin", "null")],
            &[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://127.0.0.1:9091"),
            ],
            &[("origin", "http://127.0.0.1:9090")],
            &[("host", "127.0.0.1:9090"), ("sec-fetch-site", "cross-site")],
            &[("host", "localhost:9090"), ("sec-fetch-site", "same-site")],
        ] {
            assert!(cross_site(&headers(pairs)).is_some(), "{pairs:?}");
        }
    }
}
