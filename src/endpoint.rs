//! The `/debug/hogs` endpoint: the report as JSON, text and Prometheus metrics.
//!
//! | request | answer |
//! |---|---|
//! | `GET /debug/hogs` | the [`Report`](crate::Report) as JSON |
//! | `GET /debug/hogs?format=text` | the aligned text table |
//! | `GET /debug/hogs?format=html`, or a browser (`Accept: text/html`) | the HTML page |
//! | `GET /debug/hogs?reset=true` | the report, and a new window starts |
//! | `GET /debug/hogs/metrics` | Prometheus text exposition |
//! | `GET /debug/hogs/flamegraph.svg` | a flame graph of the watchdog's stall stacks (feature `watchdog`) |
//!
//! Any unknown, repeated or malformed query parameter is answered with `400 Bad Request` and a
//! one-line message naming it.
//!
//! # Security
//!
//! The endpoint reveals your route names and how long each takes, and `?reset=true` lets whoever
//! can reach it clear the statistics. Do not expose it to the internet. Either put it behind
//! your authentication layer:
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

use axum::extract::RawQuery;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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

/// What the query string of `GET /debug/hogs` asked for.
#[derive(Debug, PartialEq, Eq)]
struct ReportQuery {
    format: Option<Format>,
    reset: bool,
}

/// A query the endpoint refuses, as a one-line message.
#[derive(Debug, PartialEq, Eq)]
struct BadQuery(String);

impl IntoResponse for BadQuery {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.0 + "\n",
        )
            .into_response()
    }
}

/// Shown in messages; user input is escaped so a message stays one printable line.
fn quoted(text: &str) -> String {
    format!("`{}`", text.escape_default())
}

fn parse_report_query(query: Option<&str>) -> Result<ReportQuery, BadQuery> {
    let mut parsed = ReportQuery {
        format: None,
        reset: false,
    };
    let mut seen_reset = false;
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
            "reset" if !seen_reset => {
                seen_reset = true;
                parsed.reset = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(BadQuery(format!(
                            "bad value {} for query parameter `reset`: expected true or false",
                            quoted(&value)
                        )))
                    }
                }
            }
            "format" | "reset" => {
                return Err(BadQuery(format!(
                    "query parameter {} is given more than once",
                    quoted(&key)
                )))
            }
            _ => return Err(unknown(&key, "format, reset")),
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
                async move { serve_report(&detector, query.0.as_deref(), &headers) }
            }),
        )
        .route(
            "/debug/hogs/metrics",
            get(move |query: RawQuery| {
                let detector = for_metrics.clone();
                async move { serve_metrics(&detector, query.0.as_deref()) }
            }),
        );
    #[cfg(feature = "watchdog")]
    let router = router.route(
        "/debug/hogs/flamegraph.svg",
        get(move |query: RawQuery| {
            let detector = for_flamegraph.clone();
            async move { serve_flamegraph(&detector, query.0.as_deref()) }
        }),
    );
    router
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
    respond("image/svg+xml", detector.report().flamegraph_svg())
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
    let query = match parse_report_query(query) {
        Ok(query) => query,
        Err(bad) => return bad.into_response(),
    };
    let report = if query.reset {
        detector.report_and_reset()
    } else {
        detector.report()
    };
    let default = if wants_html(headers) {
        Format::Html
    } else {
        Format::Json
    };
    match query.format.unwrap_or(default) {
        Format::Json => match serde_json::to_string(&report) {
            Ok(json) => respond("application/json", json),
            Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        },
        Format::Text => respond("text/plain; charset=utf-8", report.to_text()),
        Format::Html => respond("text/html; charset=utf-8", report.to_html()),
    }
}

fn serve_metrics(detector: &Detector, query: Option<&str>) -> Response {
    if let Err(bad) = no_parameters(query) {
        return bad.into_response();
    }
    let mut out = String::new();
    render::prometheus::render(&detector.report(), &mut out);
    respond("text/plain; version=0.0.4; charset=utf-8", out)
}

fn respond(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
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
            ReportQuery {
                format: None,
                reset: false
            }
        );
        assert_eq!(
            parse_report_query(Some("format=text&reset=true")).unwrap(),
            ReportQuery {
                format: Some(Format::Text),
                reset: true
            }
        );
        for (query, named) in [
            ("frmat=text", "frmat"),
            ("format=xml", "format"),
            ("reset=maybe", "reset"),
            ("reset=true&reset=false", "reset"),
            ("%FF=1", "\\u{fffd}"),
            ("format=%C0", "format"),
        ] {
            let BadQuery(message) = parse_report_query(Some(query)).unwrap_err();
            assert!(message.contains(named), "{query}: {message}");
            assert!(!message.contains('\n'), "{query}: {message}");
        }
    }
}
