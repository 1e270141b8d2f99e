//! Watched futures and streams: thin wrappers over the recorder's one poll path
//! (`Recorder::poll`), which times each poll, records it and runs the slow-poll policy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::recorder::{Label, Outcome, Own, Recorder};

/// What happened to one watched future so far: its own polls, not its label's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FutureTiming {
    /// Polls so far.
    pub polls: u64,
    /// Time spent inside polls.
    pub busy: Duration,
    /// The longest poll.
    pub longest_poll: Duration,
}

impl FutureTiming {
    pub(crate) fn of(own: &Own, recorder: &Recorder) -> Self {
        Self {
            polls: own.polls,
            busy: Duration::from_nanos(recorder.ticks.ns(own.busy_ticks)),
            longest_poll: Duration::from_nanos(recorder.ticks.ns(own.longest_ticks)),
        }
    }
}

pin_project! {
    /// A future or stream whose polls are timed and recorded; made by
    /// [`Detector::watch`](crate::Detector::watch) and
    /// [`Detector::watch_stream`](crate::Detector::watch_stream).
    ///
    /// Dropping it before it is ready (a stream: before it ends) counts as cancelled; a
    /// panicking poll counts as panicked and the panic propagates unchanged.
    #[must_use = "futures and streams do nothing unless polled"]
    pub struct Watched<F> {
        #[pin]
        inner: F,
        recorder: Arc<Recorder>,
        label: Arc<Label>,
        own: Own,
    }

    impl<F> PinnedDrop for Watched<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.own.end(this.recorder, this.label, Outcome::Cancelled);
        }
    }
}

impl<F> Watched<F> {
    pub(crate) fn new(inner: F, recorder: Arc<Recorder>, label: Arc<Label>) -> Self {
        Self {
            inner,
            recorder,
            label,
            own: Own::default(),
        }
    }

    /// This future's own polls so far.
    pub fn timing(&self) -> FutureTiming {
        FutureTiming::of(&self.own, &self.recorder)
    }

    /// The label this future is recorded under (`<other>` if it was folded).
    pub fn label(&self) -> &str {
        &self.label.name
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let (recorder, label, own) = (&**this.recorder, &**this.label, this.own);
        let inner = this.inner;
        let result = recorder.poll(label, own, || inner.poll(cx));
        if result.is_ready() {
            own.end(recorder, label, Outcome::Completed);
        }
        result
    }
}

impl<S: Stream> Stream for Watched<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let (recorder, label, own) = (&**this.recorder, &**this.label, this.own);
        let inner = this.inner;
        let result = recorder.poll(label, own, || inner.poll_next(cx));
        if let Poll::Ready(None) = result {
            own.end(recorder, label, Outcome::Completed);
        }
        result
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
