//! What watching costs per poll, side by side with a bare poll and tokio-metrics' `TaskMonitor`.
//!
//! Each "poll" benchmark polls one long-lived future that is always pending, so it measures the
//! instrumentation around a poll and nothing else (no allocation, no registry lookup).
//! Run: `cargo bench --bench overhead`.

use std::future::Future;
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

/// A future that is never ready and does almost nothing per poll.
struct Pending(u64);

impl Future for Pending {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        self.0 = self.0.wrapping_add(1);
        black_box(self.0);
        Poll::Pending
    }
}

fn poll_once<F: Future>(future: Pin<&mut F>) {
    let mut cx = Context::from_waker(Waker::noop());
    black_box(future.poll(&mut cx).is_pending());
}

fn detector() -> hogwatch::Detector {
    hogwatch::Detector::builder()
        .threshold(Duration::from_millis(10))
        .build()
        .expect("valid configuration")
}

fn per_poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll");
    group.bench_function("bare", |b| {
        let mut future = pin!(Pending(0));
        b.iter(|| poll_once(future.as_mut()));
    });
    group.bench_function("hogwatch", |b| {
        let detector = detector();
        let mut future = pin!(detector.watch("bench", Pending(0)));
        b.iter(|| poll_once(future.as_mut()));
    });
    // The watchdog on and nothing blocking: each poll also publishes itself in its thread's
    // slot (the watchdog thread looks every 12.5 ms and finds nothing to do).
    #[cfg(feature = "watchdog")]
    group.bench_function("hogwatch_watchdog", |b| {
        let detector = hogwatch::Detector::builder()
            .threshold(Duration::from_millis(10))
            .watchdog(Duration::from_millis(50))
            .build()
            .expect("valid configuration");
        let mut future = pin!(detector.watch("bench", Pending(0)));
        b.iter(|| poll_once(future.as_mut()));
    });
    group.bench_function("tokio_metrics", |b| {
        let monitor = tokio_metrics::TaskMonitor::new();
        let mut future = pin!(monitor.instrument(Pending(0)));
        b.iter(|| poll_once(future.as_mut()));
    });
    group.bench_function("quanta_raw_read", |b| {
        let clock = quanta::Clock::new();
        b.iter(|| black_box(clock.raw()));
    });
    group.bench_function("instant_now", |b| b.iter(|| black_box(Instant::now())));
    group.finish();
}

/// `threads` threads each poll `iters` times at once; the time of the slowest.
fn on_threads(threads: usize, iters: u64, poll: Arc<dyn Fn(u64) + Send + Sync>) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let threads: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            let poll = poll.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                poll(iters);
                start.elapsed()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().expect("bench thread"))
        .max()
        .unwrap_or_default()
}

/// 1, 2, 4 and 8 threads poll futures of one label at once: does recording scale with threads?
/// (On a 2-core machine, 4 and 8 threads take turns: the time per poll grows with threads / cores
/// even with no sharing at all.)
fn threads_one_label(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll_threads_one_label");
    for threads in [1usize, 2, 4, 8] {
        group.bench_function(format!("hogwatch/{threads}"), |b| {
            let detector = detector();
            b.iter_custom(|iters| {
                let detector = detector.clone();
                on_threads(
                    threads,
                    iters,
                    Arc::new(move |iters| {
                        let mut future = pin!(detector.watch("bench", Pending(0)));
                        for _ in 0..iters {
                            poll_once(future.as_mut());
                        }
                    }),
                )
            })
        });
        group.bench_function(format!("bare/{threads}"), |b| {
            b.iter_custom(|iters| {
                on_threads(
                    threads,
                    iters,
                    Arc::new(|iters| {
                        let mut future = pin!(Pending(0));
                        for _ in 0..iters {
                            poll_once(future.as_mut());
                        }
                    }),
                )
            })
        });
    }
    group.finish();
}

/// Two threads poll futures of the same label at once: the cost of sharing its counters.
fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll_two_threads_one_label");
    let run = |iters: u64, poll: Arc<dyn Fn(u64) + Send + Sync>| on_threads(2, iters, poll);
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| {
            run(
                iters,
                Arc::new(|iters| {
                    let mut future = pin!(Pending(0));
                    for _ in 0..iters {
                        poll_once(future.as_mut());
                    }
                }),
            )
        })
    });
    group.bench_function("hogwatch", |b| {
        let detector = detector();
        b.iter_custom(|iters| {
            let detector = detector.clone();
            run(
                iters,
                Arc::new(move |iters| {
                    let mut future = pin!(detector.watch("bench", Pending(0)));
                    for _ in 0..iters {
                        poll_once(future.as_mut());
                    }
                }),
            )
        })
    });
    group.bench_function("tokio_metrics", |b| {
        let monitor = tokio_metrics::TaskMonitor::new();
        b.iter_custom(|iters| {
            let monitor = monitor.clone();
            run(
                iters,
                Arc::new(move |iters| {
                    let mut future = pin!(monitor.instrument(Pending(0)));
                    for _ in 0..iters {
                        poll_once(future.as_mut());
                    }
                }),
            )
        })
    });
    group.finish();
}

/// Creating a watched future (the label lookup) and polling it to completion once.
fn per_future(c: &mut Criterion) {
    let mut group = c.benchmark_group("future");
    group.bench_function("bare", |b| {
        b.iter(|| {
            let future = pin!(std::future::ready(1u8));
            poll_once(future);
        })
    });
    group.bench_function("hogwatch", |b| {
        let detector = detector();
        b.iter(|| {
            let future = pin!(detector.watch("bench", std::future::ready(1u8)));
            poll_once(future);
        })
    });
    group.bench_function("tokio_metrics", |b| {
        let monitor = tokio_metrics::TaskMonitor::new();
        b.iter(|| {
            let future = pin!(monitor.instrument(std::future::ready(1u8)));
            poll_once(future);
        })
    });
    group.finish();
}

/// A `GET /instruments/42` with an empty body.
fn request() -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get("/instruments/42")
        .body(axum::body::Body::empty())
        .expect("valid request")
}

/// One request through `service`, in process: ready, call, one poll (the handler is ready at
/// once).
fn call<S, B>(service: &mut S)
where
    S: tower::Service<axum::http::Request<axum::body::Body>, Response = axum::http::Response<B>>,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let mut cx = Context::from_waker(Waker::noop());
    let ready = pin!(service.ready());
    let Poll::Ready(Ok(service)) = ready.poll(&mut cx) else {
        panic!("the service is always ready")
    };
    let future = pin!(service.call(request()));
    assert!(future.poll(&mut cx).is_ready());
}

/// One request through the axum layer in-process (no sockets): a `tower::service_fn` handler, and
/// a one-route axum `Router` (where the label comes from `MatchedPath`), bare and layered.
fn per_request(c: &mut Criterion) {
    use axum::body::Body;
    use axum::http::{Request, Response};
    use tower::Layer;

    let handler = || {
        tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        })
    };
    // `.with_state(())`, as `axum::serve` does per connection: it turns the handlers into routes
    // and applies the layers once. Without it, axum layers each handler again on every request,
    // and the bench would time `HogLayer::layer` (and a fresh label lookup) per request.
    let router = || {
        axum::Router::new().route(
            "/instruments/{id}",
            axum::routing::get(|| async { "details" }),
        )
    };
    let mut group = c.benchmark_group("request");
    group.bench_function("service_fn/bare", |b| {
        let mut service = handler();
        b.iter(|| call(&mut service));
    });
    group.bench_function("service_fn/hogwatch", |b| {
        let mut service = detector().layer().layer(handler());
        b.iter(|| call(&mut service));
    });
    group.bench_function("router/bare", |b| {
        let mut service = router().with_state(());
        b.iter(|| call(&mut service));
    });
    // What any layer costs in axum (each layered route is boxed once more), for comparison.
    group.bench_function("router/noop_layer", |b| {
        let mut service = router()
            .layer(tower::util::MapRequestLayer::new(
                |request: Request<Body>| request,
            ))
            .with_state(());
        b.iter(|| call(&mut service));
    });
    group.bench_function("router/hogwatch", |b| {
        let mut service = router().layer(detector().layer()).with_state(());
        b.iter(|| call(&mut service));
    });
    group.finish();
}

criterion_group!(
    benches,
    per_poll,
    contended,
    threads_one_label,
    per_future,
    per_request,
    per_request_peers
);
criterion_main!(benches);

/// The per-route layers users pick today, in the same `request/router/*` group as hogwatch's and
/// on the same one-route router and request as `per_request`: axum-prometheus (a request counter,
/// a pending gauge and a duration histogram per `MatchedPath`, into metrics-exporter-prometheus)
/// and tower-http's `TraceLayer` with a span naming the `MatchedPath`, as axum's examples set it
/// up, under a `fmt` subscriber at INFO that writes to a sink (so the span is built and its
/// fields formatted, and no I/O is timed).
fn per_request_peers(c: &mut Criterion) {
    use axum::body::Body;
    use axum::extract::MatchedPath;
    use axum::http::Request;

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    let router = || {
        axum::Router::new().route(
            "/instruments/{id}",
            axum::routing::get(|| async { "details" }),
        )
    };

    // axum-prometheus installs its recorder globally (once per process) and spawns its upkeep
    // task (draining the histogram's samples every 5 s) on the runtime it is created in, as in
    // an app; this runtime's worker runs that task while the bench polls on the main thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("a runtime");
    let (prometheus_layer, handle) = {
        let _entered = runtime.enter();
        axum_prometheus::PrometheusMetricLayer::pair()
    };

    let mut group = c.benchmark_group("request");
    group.bench_function("router/axum_prometheus", |b| {
        let mut service = router().layer(prometheus_layer.clone()).with_state(());
        b.iter(|| call(&mut service));
    });
    group.bench_function("router/trace_layer", |b| {
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
        let _default = tracing::subscriber::set_default(subscriber);
        let trace = tower_http::trace::TraceLayer::new_for_http().make_span_with(
            |request: &Request<Body>| {
                let matched_path = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str);
                tracing::info_span!("http_request", method = ?request.method(), matched_path)
            },
        );
        let mut service = router().layer(trace).with_state(());
        b.iter(|| call(&mut service));
    });
    group.finish();
    // The layer did record: the compared work is real (this runs only where the bench did).
    let rendered = handle.render();
    assert!(
        rendered.contains("/instruments/{id}") || !rendered.contains("axum_http_requests"),
        "axum-prometheus recorded no request of the route:\n{rendered}"
    );
    drop(runtime);
}
