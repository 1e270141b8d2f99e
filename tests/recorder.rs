//! The recorder's poll path seen from outside: response bodies and streams are charged to their
//! label like futures, and windows stay exact while many threads record and another resets.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use futures_core::Stream;
use hogwatch::Detector;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A body that blocks its worker for 60 ms producing its one frame, as a lazily serialised
/// (streamed) JSON body does.
struct SlowBody {
    sent: bool,
}

impl http_body::Body for SlowBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent {
            return Poll::Ready(None);
        }
        self.sent = true;
        std::thread::sleep(Duration::from_millis(60));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"[1,2,3]")))))
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spent_in_a_response_body_counts_under_its_route() {
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async { axum::body::Body::new(SlowBody { sent: false }) }),
        )
        .layer(detector.layer());
    let address = serve(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client
        .get(format!("http://{address}/stream").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"[1,2,3]");

    let report = detector.report();
    let route = report
        .entry("GET /stream")
        .unwrap_or_else(|| panic!("no route entry:\n{}", report.to_text()));
    // The handler's one poll is fast; the body's 60 ms poll is the slow one.
    assert_eq!(route.slow_polls, 1, "{}", report.to_text());
    assert!(route.busy_us >= 60_000, "{}", report.to_text());
    assert!(route.max_poll_us >= 60_000, "{}", report.to_text());
    assert!(
        route.polls >= 3,
        "the future's poll and the body's two: {}",
        route.polls
    );
    assert_eq!((route.requests, route.completed), (1, 1));
}

/// A stream of `n` rows, each produced by 20 ms of blocking work on the executor.
struct Rows(u32);

impl Stream for Rows {
    type Item = u32;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<u32>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        std::thread::sleep(Duration::from_millis(20));
        self.0 -= 1;
        Poll::Ready(Some(self.0))
    }
}

#[test]
fn a_watched_stream_charges_each_item_to_its_label() {
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .build()
        .unwrap();
    let mut rows = Box::pin(detector.watch_stream("rows", Rows(3)));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut items = 0;
    while let Poll::Ready(Some(_)) = rows.as_mut().poll_next(&mut cx) {
        items += 1;
    }
    assert_eq!(items, 3);
    let entry = detector.report().entry("rows").cloned().unwrap();
    assert_eq!((entry.polls, entry.slow_polls, entry.completed), (4, 3, 1));
    assert!(entry.busy_us >= 60_000);
    drop(rows);
    let entry = detector.report().entry("rows").cloned().unwrap();
    assert_eq!(
        entry.cancelled, 0,
        "an ended stream is not cancelled when dropped"
    );

    let cut = detector.watch_stream("cut", Rows(3));
    drop(cut);
    assert_eq!(detector.report().entry("cut").unwrap().cancelled, 1);
}

/// Eight threads record while a ninth takes `report_and_reset` again and again: the windows
/// add up to exactly what was recorded, whatever the interleaving.
#[test]
fn windows_are_exact_while_eight_threads_record_and_another_resets() {
    let detector = Detector::builder().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let per_thread = 20_000u64;
    let writers: Vec<_> = (0..8)
        .map(|thread| {
            let detector = detector.clone();
            std::thread::spawn(move || {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let label = if thread % 2 == 0 { "even" } else { "odd" };
                for _ in 0..per_thread {
                    let mut future = Box::pin(detector.watch(label, std::future::ready(())));
                    assert!(future.as_mut().poll(&mut cx).is_ready());
                }
            })
        })
        .collect();
    let resetter = {
        let detector = detector.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut polls, mut completed, mut windows) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let report = detector.report_and_reset();
                polls += report.entries.iter().map(|entry| entry.polls).sum::<u64>();
                completed += report
                    .entries
                    .iter()
                    .map(|entry| entry.completed)
                    .sum::<u64>();
                windows += 1;
            }
            (polls, completed, windows)
        })
    };
    for writer in writers {
        writer.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (mut polls, mut completed, windows) = resetter.join().unwrap();
    let last = detector.report_and_reset();
    polls += last.entries.iter().map(|entry| entry.polls).sum::<u64>();
    completed += last
        .entries
        .iter()
        .map(|entry| entry.completed)
        .sum::<u64>();
    assert!(windows > 1, "the resetter ran while the writers did");
    assert_eq!(polls, 8 * per_thread);
    assert_eq!(completed, 8 * per_thread);
}
