//! A small in-process HTTP load driver modelled on `ab -k -n N -c C`, and a canary client.
//!
//! [`Load`] sends `N` requests over `C` keep-alive HTTP/1.1 connections (one worker per
//! connection, each sending its next request when the previous response has been read in full)
//! and returns a [`LoadResult`]: counts, requests/s and a latency histogram. [`Canary`] keeps
//! requesting one path, one request at a time, until it is stopped: its latency is what every
//! other request of the service suffers while the load runs.
//!
//! Both run on a thread with a single-threaded tokio runtime of their own, like an external `ab`:
//! a server that blocks its executor's workers must not also stall the clients measuring it.
//! So they can be awaited from the server's own runtime, even a current-thread one.
//!
//! ```ignore
//! let canary = Canary::start(addr, "/health", Duration::from_millis(5));
//! let result = Load::get(addr, "/blocking/big").requests(1000).concurrency(20).run().await;
//! let health = canary.stop().await;
//! println!("{:.0} req/s, p99 {:?}, canary p99 {:?}", result.requests_per_sec, result.p99(), health.p99());
//! ```

// Each example compiles its own copy of this module and may use only part of it (one example
// only GETs, another only POSTs), so the unused part of each copy would otherwise warn.
#![allow(dead_code)]

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

type BoxError = Box<dyn Error + Send + Sync>;
type Connection = SendRequest<Full<Bytes>>;

/// Latencies are recorded in microseconds, up to a minute, with 3 significant figures.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// A load run: what to send, how many times, over how many connections.
#[derive(Debug, Clone)]
pub struct Load {
    addr: SocketAddr,
    host: HeaderValue,
    method: Method,
    uri: Uri,
    content_type: Option<HeaderValue>,
    body: Bytes,
    requests: u64,
    concurrency: usize,
    timeout: Duration,
}

impl Load {
    /// `GET path` on the server at `addr`; 1000 requests over 10 connections unless changed.
    ///
    /// # Panics
    /// If `path` is not a valid request path (`/...`).
    pub fn get(addr: SocketAddr, path: &str) -> Self {
        Load {
            addr,
            // A socket address always makes a valid header value.
            host: HeaderValue::from_str(&addr.to_string()).expect("socket address as Host"),
            method: Method::GET,
            uri: path.parse().expect("a request path such as /health"),
            content_type: None,
            body: Bytes::new(),
            requests: 1000,
            concurrency: 10,
            timeout: Duration::from_secs(30),
        }
    }

    /// `POST path` with `body` of type `content_type` (e.g. `application/json`).
    ///
    /// # Panics
    /// If `path` is not a valid request path or `content_type` not a valid header value.
    pub fn post(addr: SocketAddr, path: &str, content_type: &str, body: impl Into<Bytes>) -> Self {
        Load {
            method: Method::POST,
            content_type: Some(HeaderValue::from_str(content_type).expect("a content type")),
            body: body.into(),
            ..Load::get(addr, path)
        }
    }

    /// Total number of requests (`ab -n`).
    pub fn requests(mut self, requests: u64) -> Self {
        self.requests = requests;
        self
    }

    /// Number of concurrent connections (`ab -c`); at least 1, at most the number of requests.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Time allowed for one request, connection included, before it counts as an error
    /// (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the load while a [`Canary`] requests `canary_path` every `period`: what the load
    /// measured, and what the canary suffered meanwhile.
    pub async fn run_beside_canary(
        &self,
        canary_path: &str,
        period: Duration,
    ) -> (LoadResult, LoadResult) {
        let canary = Canary::start(self.addr, canary_path, period);
        let load = self.run().await;
        (load, canary.stop().await)
    }

    /// Runs the load on its own thread and runtime and returns what it measured.
    pub async fn run(&self) -> LoadResult {
        let load = Arc::new(self.clone());
        // The driver thread only ends without a result if it panicked.
        on_own_thread("load-driver", move || load.drive())
            .await
            .expect("load driver thread panicked")
    }

    /// Runs the load again and again until `deadline` (the run going at the deadline ends), all
    /// on one thread and runtime of its own, and returns what the runs measured together.
    ///
    /// One thread for the whole series, not one per run as calling [`Load::run`] in a loop
    /// would: glibc gives each new thread whichever of its per-thread malloc arenas is free, and
    /// a run's buffers (its latency histograms alone are about 1.2 MiB at 8 connections) leave
    /// that arena that much larger for good, so a soak measuring its own resident memory saw it
    /// step up by 1.2 MiB whenever a large run first landed on an arena a small one had used.
    pub async fn repeat_until(&self, deadline: Instant) -> LoadResult {
        let load = Arc::new(self.clone());
        // The driver thread only ends without a result if it panicked.
        on_own_thread("load-driver", move || async move {
            let start = Instant::now();
            let mut total = Tally::new().finish(Duration::ZERO);
            while Instant::now() < deadline {
                total.absorb(&load.clone().drive().await);
            }
            total.elapsed = start.elapsed();
            total.requests_per_sec = total.requests as f64 / total.elapsed.as_secs_f64().max(1e-9);
            total
        })
        .await
        .expect("load driver thread panicked")
    }

    async fn drive(self: Arc<Self>) -> LoadResult {
        let next = Arc::new(AtomicU64::new(0));
        let workers = self.concurrency.clamp(
            1,
            usize::try_from(self.requests.max(1)).unwrap_or(usize::MAX),
        );
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (load, next) = (self.clone(), next.clone());
            tasks.spawn(async move {
                let mut tally = Tally::new();
                let mut connection = None;
                while next.fetch_add(1, Ordering::Relaxed) < load.requests {
                    load.once(&mut connection, &mut tally).await;
                }
                tally
            });
        }
        let mut total = Tally::new();
        while let Some(tally) = tasks.join_next().await {
            // A worker only panics on a bug in this module.
            total.add(&tally.expect("load worker panicked"));
        }
        total.finish(start.elapsed())
    }

    /// Sends one request on `connection` (connecting first if needed) and records the outcome.
    async fn once(&self, connection: &mut Option<Connection>, tally: &mut Tally) {
        let start = Instant::now();
        match tokio::time::timeout(self.timeout, self.send(connection)).await {
            Ok(Ok((status, bytes))) => tally.response(status, bytes, start.elapsed()),
            Ok(Err(_)) | Err(_) => {
                // Start afresh on a new connection: this one may be broken or mid-response.
                *connection = None;
                tally.errors += 1;
            }
        }
    }

    async fn send(
        &self,
        connection: &mut Option<Connection>,
    ) -> Result<(StatusCode, u64), BoxError> {
        let sender = match connection {
            Some(sender) if !sender.is_closed() => sender,
            slot => slot.insert(connect(self.addr).await?),
        };
        sender.ready().await?;
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .header(HOST, self.host.clone());
        if let Some(content_type) = &self.content_type {
            request = request.header(CONTENT_TYPE, content_type.clone());
        }
        let response = sender
            .send_request(request.body(Full::new(self.body.clone()))?)
            .await?;
        let status = response.status();
        // Read the whole body, as a client would, counting it rather than collecting it.
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                bytes = bytes.saturating_add(data.len() as u64);
            }
        }
        Ok((status, bytes))
    }
}

async fn connect(addr: SocketAddr) -> Result<Connection, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection's errors reach the sender: the next request on it fails and counts.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// What a [`Load`] run or a [`Canary`] measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Requests answered with a complete response, whatever its status.
    pub requests: u64,
    /// Of those, responses whose status was not 2xx.
    pub non_2xx: u64,
    /// Requests that got no complete response: connection error, reset or timeout.
    pub errors: u64,
    /// Response body bytes received.
    pub bytes: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// `requests / elapsed`.
    pub requests_per_sec: f64,
    /// Latency of each answered request in microseconds, connection set-up included.
    pub latency: Histogram<u64>,
}

impl LoadResult {
    /// Adds `other`'s counts and latencies to these (not its time: the caller knows the span).
    fn absorb(&mut self, other: &LoadResult) {
        self.requests += other.requests;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.bytes = self.bytes.saturating_add(other.bytes);
        // Every run's histogram has the same bounds, so adding cannot fail.
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
    }

    /// The latency at `percentile` (0 to 100); zero if nothing was answered.
    pub fn percentile(&self, percentile: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_percentile(percentile))
    }

    /// Median latency.
    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    /// 99th-percentile latency.
    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    /// Longest latency.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.latency.max())
    }

    /// Requests not answered with a 2xx status: non-2xx answers and errors.
    pub fn failures(&self) -> u64 {
        self.non_2xx + self.errors
    }

    /// Every request answered with a 2xx status: no errors, no non-2xx.
    pub fn all_ok(&self) -> bool {
        self.errors == 0 && self.non_2xx == 0
    }
}

/// Counts kept by one worker, merged at the end.
struct Tally {
    requests: u64,
    non_2xx: u64,
    errors: u64,
    bytes: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            requests: 0,
            non_2xx: 0,
            errors: 0,
            bytes: 0,
            // Constant, valid bounds: 1 µs .. 60 s, 3 significant figures.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("valid bounds"),
        }
    }

    fn response(&mut self, status: StatusCode, bytes: u64, latency: Duration) {
        self.requests += 1;
        if !status.is_success() {
            self.non_2xx += 1;
        }
        self.bytes = self.bytes.saturating_add(bytes);
        let micros = latency.as_micros().try_into().unwrap_or(u64::MAX);
        self.latency.saturating_record(micros);
    }

    fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.bytes = self.bytes.saturating_add(other.bytes);
        // Same bounds on both sides, so adding cannot fail.
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
    }

    fn finish(self, elapsed: Duration) -> LoadResult {
        LoadResult {
            requests: self.requests,
            non_2xx: self.non_2xx,
            errors: self.errors,
            bytes: self.bytes,
            elapsed,
            requests_per_sec: self.requests as f64 / elapsed.as_secs_f64().max(1e-9),
            latency: self.latency,
        }
    }
}

/// A client that requests one path again and again, one request at a time, until stopped.
#[derive(Debug)]
pub struct Canary {
    stop: oneshot::Sender<()>,
    result: oneshot::Receiver<LoadResult>,
}

impl Canary {
    /// Starts requesting `GET path` on `addr`, one request every `period` (or back to back when
    /// a request takes longer), on its own thread and runtime.
    ///
    /// # Panics
    /// If `path` is not a valid request path.
    pub fn start(addr: SocketAddr, path: &str, period: Duration) -> Self {
        let load = Load::get(addr, path);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let result = on_own_thread("canary", move || async move {
            let mut ticker = tokio::time::interval(period.max(Duration::from_micros(1)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut tally, mut connection) = (Tally::new(), None);
            let start = Instant::now();
            loop {
                tokio::select! {
                    biased;
                    // Stopped, or the `Canary` was dropped.
                    _ = &mut stopped => break,
                    _ = ticker.tick() => load.once(&mut connection, &mut tally).await,
                }
            }
            tally.finish(start.elapsed())
        });
        Canary { stop, result }
    }

    /// Stops after the request in flight, if any, and returns what the canary measured.
    pub async fn stop(self) -> LoadResult {
        let _ = self.stop.send(());
        // The canary thread only ends without a result if it panicked.
        self.result.await.expect("canary thread panicked")
    }
}

/// Runs `task` to completion on a new thread with a current-thread runtime of its own.
fn on_own_thread<T, F, Fut>(name: &str, task: F) -> oneshot::Receiver<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (sender, receiver) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // Building a runtime only fails when the OS refuses its resources; nothing to do then.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime");
            let _ = sender.send(runtime.block_on(task()));
        })
        .expect("spawn a client thread");
    receiver
}
