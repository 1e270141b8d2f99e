//! The tower middleware that watches every request of an axum router, labelled by route.
//!
//! `HogLayer` wraps each route's service; `HogService` looks the route's label up once per
//! request and wraps the response future in a [`Watched`] future; `HogFuture` counts the response
//! by status class and, when asked, adds a `Server-Timing` header.
//!
//! A request is labelled `METHOD /route/{template}` (or [`UNMATCHED_LABEL`]). The method comes
//! from a closed set, the nine methods of RFC 9110 and RFC 5789 (`GET`, `HEAD`, `POST`, `PUT`,
//! `DELETE`, `CONNECT`, `OPTIONS`, `TRACE`, `PATCH`); any other method, whatever its spelling or
//! length, is labelled [`OTHER_METHOD`]. A client choosing the method therefore picks one of at
//! most ten labels per route: it cannot fill `max_labels` with invented methods (axum runs the
//! layer for its 405 answers too) nor store a label as long as its request line.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::{HeaderValue, Method, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::detector::Detector;
use crate::report::LabelKind;
use crate::stats::LabelStats;
use crate::watch::Watched;

/// The label of requests that matched no route (the router's fallback).
pub const UNMATCHED_LABEL: &str = "<unmatched>";

/// The method part of the label of a request whose method is not one of the nine standard ones:
/// `OTHER /route/{template}`.
///
/// ```
/// assert_eq!(hogwatch::layer::OTHER_METHOD, "OTHER");
/// ```
pub const OTHER_METHOD: &str = "OTHER";

/// The method part of a route label: the standard methods by name, anything else
/// [`OTHER_METHOD`]. `Method::as_str` and short string comparisons: no allocation.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => OTHER_METHOD,
    }
}

/// A tower [`Layer`] that times every poll of every request, per route.
///
/// Made by [`Detector::layer`]. Add it with `Router::layer` (every route and the fallback) or
/// `Router::route_layer` (matched routes only).
///
/// ```
/// use axum::{routing::get, Router};
///
/// # fn main() -> Result<(), hogwatch::ConfigError> {
/// let detector = hogwatch::Detector::builder().build()?;
/// let app: Router = Router::new()
///     .route("/instruments/{id}", get(|| async { "details" }))
///     .layer(detector.layer())
///     .merge(detector.router());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HogLayer {
    detector: Detector,
}

impl HogLayer {
    pub(crate) fn new(detector: Detector) -> Self {
        Self { detector }
    }
}

impl<S> Layer<S> for HogLayer {
    type Service = HogService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HogService {
            inner,
            detector: self.detector.clone(),
            route: Arc::default(),
        }
    }
}

/// The service made by [`HogLayer`].
#[derive(Clone, Debug)]
pub struct HogService<S> {
    inner: S,
    detector: Detector,
    /// axum layers each route's method handler separately, so one service (and its clones)
    /// nearly always sees one route: remember its label to skip the registry lookup.
    route: Arc<OnceLock<RouteLabel>>,
}

/// The statistics of the route a `HogService` serves, and how to recognise that route.
struct RouteLabel {
    /// The method part of the label (see [`method_label`]), not the request's method: an
    /// invented method is never cloned (it may be as long as the request line).
    method: &'static str,
    /// Address of the `MatchedPath` text (only compared): axum hands out one `Arc<str>` per route.
    path: usize,
    stats: Arc<LabelStats>,
}

impl std::fmt::Debug for RouteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLabel")
            .field("label", &self.stats.label)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HogService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = HogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let stats = self.route_stats(&request);
        stats.record_request();
        let shared = self.detector.shared().clone();
        let server_timing = shared.server_timing;
        HogFuture {
            inner: Watched::new(self.inner.call(request), shared, stats),
            server_timing,
        }
    }
}

impl<S> HogService<S> {
    /// The statistics of the request's route, from the remembered route when it is the same.
    fn route_stats<B>(&self, request: &Request<B>) -> Arc<LabelStats> {
        let Some(path) = request.extensions().get::<MatchedPath>() else {
            return self
                .detector
                .shared()
                .registry
                .get_kind(UNMATCHED_LABEL, LabelKind::Route);
        };
        let path_address = path.as_str().as_ptr() as usize;
        let method = method_label(request.method());
        if let Some(route) = self.route.get() {
            if route.path == path_address && route.method == method {
                return route.stats.clone();
            }
        }
        let stats = lookup(&self.detector, method, path);
        let _ = self.route.set(RouteLabel {
            method,
            path: path_address,
            stats: stats.clone(),
        });
        stats
    }
}

/// Looks up the statistics of `METHOD /route/{template}` in the registry; `method` is already
/// one of the closed set.
fn lookup(detector: &Detector, method: &'static str, path: &MatchedPath) -> Arc<LabelStats> {
    let registry = &detector.shared().registry;
    // Build "METHOD path" on the stack for the usual short route, so a request does not allocate
    // just to find its label.
    let mut buffer = LabelBuffer::default();
    if write!(buffer, "{method} {}", path.as_str()).is_ok() {
        registry.get_kind(buffer.as_str(), LabelKind::Route)
    } else {
        registry.get_kind(&format!("{method} {}", path.as_str()), LabelKind::Route)
    }
}

/// A fixed-size `fmt::Write` target; writing more than fits is an error.
struct LabelBuffer {
    bytes: [u8; 192],
    len: usize,
}

impl Default for LabelBuffer {
    fn default() -> Self {
        Self {
            bytes: [0; 192],
            len: 0,
        }
    }
}

impl LabelBuffer {
    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the prefix is valid UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for LabelBuffer {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let end = self.len + text.len();
        let target = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        target.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

pin_project! {
    /// The response future of [`HogService`].
    pub struct HogFuture<F> {
        #[pin]
        inner: Watched<F>,
        server_timing: bool,
    }
}

impl<F, ResBody, E> Future for HogFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut result = std::task::ready!(this.inner.as_mut().poll(cx));
        if let Ok(response) = &mut result {
            this.inner
                .stats()
                .record_response(response.status().as_u16());
            if *this.server_timing {
                if let Ok(value) = server_timing(&this.inner) {
                    response.headers_mut().append("server-timing", value);
                }
            }
        }
        Poll::Ready(result)
    }
}

/// `hog-busy;dur=1.234, hog-longest-poll;dur=0.812, hog-polls;desc="3"` (durations in ms).
fn server_timing<F>(watched: &Watched<F>) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let timing = watched.timing();
    let value = format!(
        "hog-busy;dur={:.3};desc=\"time in polls\", hog-longest-poll;dur={:.3}, hog-polls;desc=\"{}\"",
        timing.busy.as_secs_f64() * 1e3,
        timing.longest_poll.as_secs_f64() * 1e3,
        timing.polls,
    );
    HeaderValue::from_str(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_name_a_label() {
        for name in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(method_label(&method), name);
        }
        let long = "M".repeat(100_000);
        for name in ["get", "M0X", "PROPFIND", "BREW", long.as_str()] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(method_label(&method), OTHER_METHOD, "{name:.20}");
        }
    }

    #[test]
    fn long_labels_do_not_fit_the_stack_buffer() {
        let mut buffer = LabelBuffer::default();
        assert!(write!(buffer, "GET /short").is_ok());
        assert_eq!(buffer.as_str(), "GET /short");
        let long = "x".repeat(300);
        assert!(write!(buffer, "{long}").is_err());
    }
}
