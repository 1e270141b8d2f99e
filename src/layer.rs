//! The tower middleware that watches every request of an axum router, labelled by route.
//!
//! `HogLayer` wraps each route's service; `HogService` looks the route's label up once per
//! request; `HogFuture` times each poll of the response future through the recorder's poll path,
//! counts the response by status class and, when asked, adds a `Server-Timing` header; `HogBody`
//! times each poll of the response body (`poll_frame`: a streamed or lazily produced body does
//! its work there) under the same route, after the future is done.
//!
//! A request is labelled `METHOD /route/{template}`, `METHOD <fallback>` when the router's
//! fallback answered it ([`FALLBACK_LABEL`]), or [`UNMATCHED_LABEL`] for a 404. The method comes
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
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::detector::{Builder, Detector};
use crate::recorder::{Label, LabelKind, Outcome, Own, Recorder};
use crate::watch::FutureTiming;

/// The label of requests that matched no route and were answered 404 (or never answered).
pub const UNMATCHED_LABEL: &str = "<unmatched>";

/// The route part of the label of requests that matched no route and that the router's fallback
/// answered with anything but a 404 (`Router::fallback`, `fallback_service(ServeDir::new(..))`):
/// `GET <fallback>`, one label per method (at most ten). Their polls until the response are
/// counted under [`UNMATCHED_LABEL`] (the answer is not known before), the request, its
/// response and its body's polls under `METHOD <fallback>`.
pub const FALLBACK_LABEL: &str = "<fallback>";

/// The label of a request the router's fallback answered: `METHOD <fallback>`.
fn fallback_label(recorder: &Recorder, method: &'static str) -> Arc<Label> {
    let mut buffer = LabelBuffer::default();
    match write!(buffer, "{method} {FALLBACK_LABEL}") {
        Ok(()) => recorder.registry.get(buffer.as_str(), LabelKind::Route),
        Err(_) => recorder
            .registry
            .get(&format!("{method} {FALLBACK_LABEL}"), LabelKind::Route),
    }
}

impl Detector {
    /// A tower layer that watches every request of an axum router, labelled by method and route
    /// template (`GET /instruments/{id}`); requests that match no route are `GET <fallback>` when
    /// the router's fallback answers them (a static file), `<unmatched>` when it answers 404.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    ///
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// let app: Router = Router::new()
    ///     .route("/instruments/{id}", get(|| async { "details" }))
    ///     .layer(detector.layer());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn layer(&self) -> HogLayer {
        self.start_probes_if_in_runtime();
        HogLayer::new(self.clone())
    }
}

impl Builder {
    /// Adds a `Server-Timing` header to every response of the [layer](Detector::layer) with the
    /// request's time in polls, its longest poll and its poll count, so `curl -v` and a browser's
    /// devtools show them per request. Off by default: it tells clients how your server spends
    /// its time.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().server_timing(true).build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn server_timing(mut self, enabled: bool) -> Self {
        self.server_timing = enabled;
        self
    }
}

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
    stats: Arc<Label>,
}

impl std::fmt::Debug for RouteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLabel")
            .field("label", &self.stats.name)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HogService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<HogBody<ResBody>>;
    type Error = S::Error;
    type Future = HogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (label, matched) = self.route_stats(&request);
        // A request that matched no route is counted once it is answered: a 404 is
        // `<unmatched>`, anything else came from the router's fallback (see `FALLBACK_LABEL`).
        let unmatched = match matched {
            true => {
                label.writer().request();
                None
            }
            false => Some(method_label(request.method())),
        };
        HogFuture {
            inner: self.inner.call(request),
            watch: Some(Watch {
                recorder: self.detector.recorder().clone(),
                label,
            }),
            own: Own::default(),
            server_timing: self.detector.server_timing(),
            unmatched,
        }
    }
}

impl<S> HogService<S> {
    /// The statistics of the request's route, from the remembered route when it is the same,
    /// and whether it matched one (`false`: [`UNMATCHED_LABEL`]'s).
    fn route_stats<B>(&self, request: &Request<B>) -> (Arc<Label>, bool) {
        let Some(path) = request.extensions().get::<MatchedPath>() else {
            let unmatched = self
                .detector
                .recorder()
                .registry
                .get(UNMATCHED_LABEL, LabelKind::Route);
            return (unmatched, false);
        };
        let path_address = path.as_str().as_ptr() as usize;
        let method = method_label(request.method());
        if let Some(route) = self.route.get() {
            if route.path == path_address && route.method == method {
                return (route.stats.clone(), true);
            }
        }
        let stats = lookup(&self.detector, method, path);
        let _ = self.route.set(RouteLabel {
            method,
            path: path_address,
            stats: stats.clone(),
        });
        (stats, true)
    }
}

/// Looks up the statistics of `METHOD /route/{template}` in the registry; `method` is already
/// one of the closed set.
fn lookup(detector: &Detector, method: &'static str, path: &MatchedPath) -> Arc<Label> {
    let registry = &detector.recorder().registry;
    // Build "METHOD path" on the stack for the usual short route, so a request does not allocate
    // just to find its label.
    let mut buffer = LabelBuffer::default();
    if write!(buffer, "{method} {}", path.as_str()).is_ok() {
        registry.get(buffer.as_str(), LabelKind::Route)
    } else {
        registry.get(&format!("{method} {}", path.as_str()), LabelKind::Route)
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

/// The recorder and the route's label, handed from the response future to its body.
struct Watch {
    recorder: Arc<Recorder>,
    label: Arc<Label>,
}

pin_project! {
    /// The response future of [`HogService`].
    pub struct HogFuture<F> {
        #[pin]
        inner: F,
        // `None` once the response is out (moved into its body).
        watch: Option<Watch>,
        own: Own,
        server_timing: bool,
        // A request that matched no route, not counted yet: the method part of its label if
        // the router's fallback answers it.
        unmatched: Option<&'static str>,
    }

    impl<F> PinnedDrop for HogFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(watch) = this.watch {
                // Never answered (cancelled, or it panicked): an unmatched request stays
                // `<unmatched>`.
                if this.unmatched.take().is_some() {
                    watch.label.writer().request();
                }
                this.own.end(&watch.recorder, &watch.label, Outcome::Cancelled);
            }
        }
    }
}

impl<F, ResBody, E> Future for HogFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<HogBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Polled after it returned `Ready`: a contract violation by the caller; poll the inner
        // future unwatched and let it answer (most panic).
        let Some(watch) = this.watch.as_mut() else {
            let result = std::task::ready!(this.inner.poll(cx));
            return Poll::Ready(result.map(|response| response.map(HogBody::unwatched)));
        };
        let inner = this.inner;
        let own = &mut *this.own;
        let result = std::task::ready!(watch.recorder.poll(&watch.label, own, || inner.poll(cx)));
        if let Some(method) = this.unmatched.take() {
            // Answered by the router's fallback (a static file, an app's own page) unless 404.
            if matches!(&result, Ok(response) if response.status() != StatusCode::NOT_FOUND) {
                watch.label = fallback_label(&watch.recorder, method);
            }
            watch.label.writer().request();
        }
        own.end(&watch.recorder, &watch.label, Outcome::Completed);
        // Ready: hand the recorder and the label on to the body, which is polled next.
        let watch = this.watch.take();
        Poll::Ready(result.map(|mut response| {
            if let Some(watch) = &watch {
                watch.label.writer().response(response.status().as_u16());
                if *this.server_timing {
                    if let Ok(value) = server_timing(FutureTiming::of(own, &watch.recorder)) {
                        response.headers_mut().append("server-timing", value);
                    }
                }
            }
            response.map(|body| HogBody {
                inner: body,
                watch,
                own: Own::NOT_ENDING,
            })
        }))
    }
}

pin_project! {
    /// The response body of [`HogService`]: each `poll_frame` is timed and recorded under the
    /// route, like a poll of the response future (polls and busy time; the request itself was
    /// counted when the future ended).
    pub struct HogBody<B> {
        #[pin]
        inner: B,
        watch: Option<Watch>,
        own: Own,
    }
}

impl<B> HogBody<B> {
    fn unwatched(inner: B) -> Self {
        Self {
            inner,
            watch: None,
            own: Own::NOT_ENDING,
        }
    }
}

impl<B: Body> Body for HogBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let inner = this.inner;
        match this.watch {
            Some(watch) => watch
                .recorder
                .poll(&watch.label, this.own, || inner.poll_frame(cx)),
            None => inner.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `hog-busy;dur=1.234, hog-longest-poll;dur=0.812, hog-polls;desc="3"` (durations in ms).
fn server_timing(timing: FutureTiming) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
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
