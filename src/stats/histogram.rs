//! A poll-duration histogram that many threads record into at once without a lock.
//!
//! `hdrhistogram::Histogram` needs `&mut self` to record, and its `sync` recorders block a
//! snapshot until every (possibly idle) worker answers. So the hot path writes into an array of
//! atomic counters laid out *exactly* like an HdrHistogram of 1 µs .. 60 s at 3 significant
//! figures, and a snapshot copies the counters into a real `hdrhistogram::Histogram`, which does
//! all the quantile maths. Recording is one relaxed `fetch_add`; a snapshot never waits on a worker.
//!
//! The counters are split into chunks of 1024 (one HdrHistogram half-bucket). Chunks up to the
//! hog threshold are allocated with the label; the ones above are allocated on the first poll that
//! lands there, which is a slow poll and already off the fast path. Most labels therefore cost tens
//! of kilobytes, not the 139 KiB a fully populated 60 s histogram needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use hdrhistogram::Histogram;

/// Smallest recorded value, in microseconds; shorter polls saturate to it.
pub(crate) const LOWEST_US: u64 = 1;
/// Largest recorded value, in microseconds (60 s); longer polls saturate to it.
pub(crate) const HIGHEST_US: u64 = 60_000_000;
/// Significant figures, as in `Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG)`.
pub(crate) const SIGFIG: u8 = 3;

// The layout of an HdrHistogram with lowest value 1 and 3 significant figures: 2048 sub-buckets
// per bucket, the lower half of every bucket after the first being covered by the previous one.
const SUB_BUCKET_COUNT_MAGNITUDE: u32 = 11;
const SUB_BUCKET_HALF_COUNT_MAGNITUDE: u32 = SUB_BUCKET_COUNT_MAGNITUDE - 1;
const SUB_BUCKET_HALF_COUNT: usize = 1 << SUB_BUCKET_HALF_COUNT_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = (1 << SUB_BUCKET_COUNT_MAGNITUDE) - 1;
const LEADING_ZERO_COUNT_BASE: u32 = 64 - SUB_BUCKET_COUNT_MAGNITUDE;

const CHUNK_LEN: usize = SUB_BUCKET_HALF_COUNT;
const CHUNKS: usize = index_of(HIGHEST_US) / CHUNK_LEN + 1;

type Chunk = [AtomicU64; CHUNK_LEN];

/// Index of `value_us` (already clamped) in HdrHistogram's counts array.
const fn index_of(value_us: u64) -> usize {
    let bucket = LEADING_ZERO_COUNT_BASE - (value_us | SUB_BUCKET_MASK).leading_zeros();
    let sub_bucket = (value_us >> bucket) as usize;
    ((bucket as usize + 1) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) + sub_bucket - SUB_BUCKET_HALF_COUNT
}

/// The lowest value that lands at `index`: the inverse of `index_of`.
fn value_at(index: usize) -> u64 {
    let mut bucket = (index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) as i64 - 1;
    let mut sub_bucket = (index & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT;
    if bucket < 0 {
        sub_bucket -= SUB_BUCKET_HALF_COUNT;
        bucket = 0;
    }
    (sub_bucket as u64) << bucket
}

fn new_chunk() -> Box<Chunk> {
    Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
}

/// Lock-free poll-duration counters in HdrHistogram layout.
pub(crate) struct AtomicHistogram {
    /// Counts of polls under 1024 µs, where nearly every poll lands: inline, and indexed by the
    /// value itself, so the common case is one `fetch_add` with no pointer to chase.
    first: Chunk,
    /// The other chunks (`chunks[0]` is unused: it is `first`).
    chunks: [OnceLock<Box<Chunk>>; CHUNKS],
}

impl AtomicHistogram {
    /// A histogram whose chunks up to `preallocate_up_to_us` exist from the start, so recording
    /// any value up to it never allocates.
    pub(crate) fn new(preallocate_up_to_us: u64) -> Self {
        let histogram = Self {
            first: std::array::from_fn(|_| AtomicU64::new(0)),
            chunks: std::array::from_fn(|_| OnceLock::new()),
        };
        let last = index_of(clamp(preallocate_up_to_us)) / CHUNK_LEN;
        for chunk in &histogram.chunks[1..=last.max(1)] {
            let _ = chunk.set(new_chunk());
        }
        histogram
    }

    /// Adds one poll of `value_us` microseconds (saturating to 1 µs .. 60 s).
    #[inline]
    pub(crate) fn record(&self, value_us: u64) {
        // Below 1024 µs the HdrHistogram index is the value itself (0 saturates to 1).
        if let Some(counter) = self.first.get(value_us.max(LOWEST_US) as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.record_slow(value_us);
    }

    #[cold]
    fn record_slow(&self, value_us: u64) {
        let index = index_of(clamp(value_us));
        let chunk = self.chunks[index / CHUNK_LEN].get_or_init(new_chunk);
        chunk[index % CHUNK_LEN].fetch_add(1, Ordering::Relaxed);
    }

    /// Copies the counters into `into`; with `reset`, each counter is taken and zeroed in one
    /// atomic step, so a poll recorded concurrently lands in this window or the next, never neither.
    pub(crate) fn drain_into(&self, into: &mut Histogram<u64>, reset: bool) {
        let chunks = std::iter::once(Some(&self.first))
            .chain(
                self.chunks[1..]
                    .iter()
                    .map(|chunk| chunk.get().map(|boxed| &**boxed)),
            )
            .enumerate();
        for (chunk_index, chunk) in chunks {
            let Some(chunk) = chunk else { continue };
            for (offset, counter) in chunk.iter().enumerate() {
                let count = if reset {
                    counter.swap(0, Ordering::Relaxed)
                } else {
                    counter.load(Ordering::Relaxed)
                };
                if count > 0 {
                    let value = value_at(chunk_index * CHUNK_LEN + offset);
                    // Cannot fail: `value` is inside the bounds the histogram was made with, and
                    // the histogram was made by `empty_histogram` below.
                    let _ = into.record_n(value, count);
                }
            }
        }
    }
}

fn clamp(value_us: u64) -> u64 {
    value_us.clamp(LOWEST_US, HIGHEST_US)
}

/// An empty `Histogram` with the bounds every label uses.
pub(crate) fn empty_histogram() -> Histogram<u64> {
    // The constant bounds are valid (1 <= 2 * 1, 3 significant figures), so this cannot fail.
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG).expect("constant bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_hdrhistogram() {
        let reference = empty_histogram();
        let mut value = 1u64;
        while value <= HIGHEST_US {
            let back = value_at(index_of(value));
            assert_eq!(
                back,
                reference.lowest_equivalent(value),
                "value {value} maps to index {} whose lowest value is {back}",
                index_of(value)
            );
            value = value + value / 7 + 1;
        }
        assert!(index_of(HIGHEST_US) < CHUNKS * CHUNK_LEN);
    }

    #[test]
    fn records_and_drains_with_saturation() {
        let histogram = AtomicHistogram::new(10_000);
        histogram.record(0);
        histogram.record(1_023);
        histogram.record(1_024);
        histogram.record(1_500);
        histogram.record(u64::MAX);
        let mut snapshot = empty_histogram();
        histogram.drain_into(&mut snapshot, true);
        assert_eq!(snapshot.len(), 5);
        assert_eq!(snapshot.count_at(1_023), 1);
        assert_eq!(snapshot.count_at(1_024), 1);
        assert_eq!(snapshot.min(), 1);
        assert!(snapshot.max() >= HIGHEST_US);
        let mut again = empty_histogram();
        histogram.drain_into(&mut again, false);
        assert_eq!(again.len(), 0, "reset zeroes the counters");
    }
}
