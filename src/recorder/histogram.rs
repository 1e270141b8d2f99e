//! Poll durations in log-linear buckets: 32 per power of two, exact below 64 µs.
//!
//! A bucket's width is at most 1/32 of its lowest value, so answering with its middle is within
//! 1.6 % of any value in it, from 1 µs to 60 s (the issue asked for 3 %). That needs 698 buckets,
//! against HdrHistogram's 34,816 for 3 significant figures: the precision nobody reads is what
//! made a report allocate ~136 KiB per label.
//!
//! The counters a thread writes live in [`Buckets`]: the 64 buckets under 64 µs (where nearly
//! every poll lands) inline, each further power of two in a chunk of 32 counters allocated the
//! first time a poll of that length lands there on that thread's storage (at most 20 times).
//! [`PollHistogram`] is what a report holds: only the non-empty buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Smallest recorded value, in microseconds; shorter polls count as 1 µs.
pub(crate) const LOWEST_US: u64 = 1;
/// Largest recorded value, in microseconds (60 s); longer polls count as 60 s.
pub(crate) const HIGHEST_US: u64 = 60_000_000;

/// Buckets per power of two (and the exact range is twice this).
const SUB: u32 = 32;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Values below this have a bucket each.
const EXACT: u64 = 2 * SUB as u64;
/// Counters inline in every `Buckets`.
const INLINE: usize = EXACT as usize;
/// The largest index (that of `HIGHEST_US`) plus one.
pub(crate) const BUCKETS: usize = index_of(HIGHEST_US) + 1;
/// Chunks of `SUB` counters above the inline ones.
const CHUNKS: usize = (BUCKETS - INLINE).div_ceil(SUB as usize);

type Chunk = [AtomicU64; SUB as usize];

/// The bucket of `value_us`, already clamped to `LOWEST_US..=HIGHEST_US`.
#[inline]
pub(crate) const fn index_of(value_us: u64) -> usize {
    if value_us < EXACT {
        return value_us as usize;
    }
    // `value_us` is in [2^octave, 2^(octave+1)) with octave >= SUB_BITS + 1.
    let octave = 63 - value_us.leading_zeros();
    let shift = octave - SUB_BITS;
    let sub = (value_us >> shift) as usize - SUB as usize;
    INLINE + (octave - SUB_BITS - 1) as usize * SUB as usize + sub
}

/// The values that land in bucket `index`: `low..high`.
pub(crate) const fn range_of(index: usize) -> (u64, u64) {
    if index < INLINE {
        return (index as u64, index as u64 + 1);
    }
    let rest = index - INLINE;
    let shift = (rest / SUB as usize) as u32 + 1;
    let sub = (rest % SUB as usize) as u64 + SUB as u64;
    (sub << shift, (sub + 1) << shift)
}

/// Clamps a poll duration to what the buckets hold.
#[inline]
pub(crate) fn clamp_us(value_us: u64) -> u64 {
    value_us.clamp(LOWEST_US, HIGHEST_US)
}

/// One storage's poll counters, cumulative (never reset: a report subtracts what the last
/// reset saw, see `super::label`).
pub(crate) struct Buckets {
    inline: [AtomicU64; INLINE],
    chunks: [OnceLock<Box<Chunk>>; CHUNKS],
}

impl Buckets {
    pub(crate) fn new() -> Self {
        Self {
            inline: std::array::from_fn(|_| AtomicU64::new(0)),
            chunks: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The counter of `value_us`, allocating its chunk on first use.
    #[inline]
    pub(crate) fn counter(&self, value_us: u64) -> &AtomicU64 {
        let index = index_of(clamp_us(value_us));
        match self.inline.get(index) {
            Some(counter) => counter,
            None => self.chunk_counter(index),
        }
    }

    #[cold]
    #[inline(never)]
    fn chunk_counter(&self, index: usize) -> &AtomicU64 {
        let rest = index - INLINE;
        let chunk = self.chunks[rest / SUB as usize]
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        &chunk[rest % SUB as usize]
    }

    /// Adds every counter into `into` (indexed like the buckets).
    pub(crate) fn add_to(&self, into: &mut [u64; BUCKETS]) {
        for (sum, counter) in into.iter_mut().zip(&self.inline) {
            *sum = sum.wrapping_add(counter.load(Ordering::Relaxed));
        }
        for (chunk_index, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk.get() else { continue };
            let base = INLINE + chunk_index * SUB as usize;
            for (offset, counter) in chunk.iter().enumerate() {
                if let Some(sum) = into.get_mut(base + offset) {
                    *sum = sum.wrapping_add(counter.load(Ordering::Relaxed));
                }
            }
        }
    }

    /// Bytes this storage holds now.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .filter(|chunk| chunk.get().is_some())
            .count()
            * std::mem::size_of::<Chunk>()
    }
}

/// One bucket of a [`PollHistogram`]: `count` polls that took from `low_us` up to (not
/// including) `high_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bucket {
    /// The shortest duration in the bucket, in microseconds.
    pub low_us: u64,
    /// The first duration past the bucket, in microseconds.
    pub high_us: u64,
    /// Polls in the bucket.
    pub count: u64,
}

impl Bucket {
    /// The value that stands for the bucket: its middle, within 1.6 % of any value in it.
    pub fn value_us(&self) -> u64 {
        self.low_us + (self.high_us - self.low_us) / 2
    }
}

/// The poll durations of one label in one report window: log-linear buckets (32 per power of
/// two, exact under 64 µs), so any quantile is within 1.6 % of the true one from 1 µs to 60 s.
///
/// ```
/// # fn main() -> Result<(), hogwatch::ConfigError> {
/// let detector = hogwatch::Detector::builder().build()?;
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(detector.watch("tick", async { std::thread::sleep(std::time::Duration::from_millis(2)) }));
/// let report = detector.report();
/// let histogram = &report.entry("tick").unwrap().histogram;
/// assert_eq!(histogram.len(), 1);
/// let bucket = histogram.buckets().next().unwrap();
/// assert!(bucket.high_us > 2_000, "slept at least 2 ms");
/// assert!(histogram.value_at_quantile(0.5) >= 1_960);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollHistogram {
    /// Non-empty buckets by index, ascending.
    buckets: Vec<(u16, u64)>,
    len: u64,
}

impl PollHistogram {
    /// Keeps the non-empty buckets of `counts`.
    pub(crate) fn from_counts(counts: &[u64; BUCKETS]) -> Self {
        let mut histogram = Self::default();
        for (index, &count) in counts.iter().enumerate() {
            if count > 0 {
                // BUCKETS < u16::MAX.
                histogram.buckets.push((index as u16, count));
                histogram.len = histogram.len.saturating_add(count);
            }
        }
        histogram
    }

    /// A histogram of `values_us` (microseconds, clamped to 1 µs .. 60 s).
    pub fn from_values(values_us: impl IntoIterator<Item = u64>) -> Self {
        let mut counts = [0u64; BUCKETS];
        for value in values_us {
            let count = &mut counts[index_of(clamp_us(value))];
            *count = count.saturating_add(1);
        }
        Self::from_counts(&counts)
    }

    /// The non-empty buckets as (index, count).
    pub(crate) fn raw(&self) -> &[(u16, u64)] {
        &self.buckets
    }

    /// Polls recorded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no poll was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The non-empty buckets, shortest first.
    pub fn buckets(&self) -> impl Iterator<Item = Bucket> + '_ {
        self.buckets.iter().map(|&(index, count)| {
            let (low_us, high_us) = range_of(usize::from(index));
            Bucket {
                low_us,
                high_us,
                count,
            }
        })
    }

    /// The duration under which a share `quantile` (0 to 1) of the polls fall, in microseconds
    /// (0 if empty); within 1.6 % of the exact quantile.
    pub fn value_at_quantile(&self, quantile: f64) -> u64 {
        if self.len == 0 {
            return 0;
        }
        let quantile = if quantile.is_nan() {
            0.0
        } else {
            quantile.clamp(0.0, 1.0)
        };
        // The rank of the quantile, 1-based, as HdrHistogram counts it.
        let rank = ((quantile * self.len as f64).ceil() as u64).clamp(1, self.len);
        let mut seen = 0u64;
        for bucket in self.buckets() {
            seen = seen.saturating_add(bucket.count);
            if seen >= rank {
                return bucket.value_us();
            }
        }
        self.max()
    }

    /// The longest poll, as the last duration of its bucket (an upper bound, within 3.2 %).
    pub fn max(&self) -> u64 {
        self.buckets()
            .last()
            .map_or(0, |bucket| (bucket.high_us - 1).max(bucket.low_us))
    }

    /// The shortest poll, as the first duration of its bucket (a lower bound).
    pub fn min(&self) -> u64 {
        self.buckets().next().map_or(0, |bucket| bucket.low_us)
    }

    /// Polls whose bucket's value ([`Bucket::value_us`]) is at most `us`: a cumulative count,
    /// as Prometheus' `le` buckets want.
    pub fn count_up_to(&self, us: u64) -> u64 {
        self.buckets()
            .take_while(|bucket| bucket.value_us() <= us)
            .map(|bucket| bucket.count)
            .fold(0, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn indexes_are_contiguous_and_invert() {
        let mut previous = 0;
        for index in 1..BUCKETS {
            let (low, high) = range_of(index);
            assert_eq!(
                low,
                range_of(index - 1).1,
                "bucket {index} starts where {previous} ends"
            );
            assert_eq!(index_of(low), index);
            assert_eq!(index_of(high - 1), index);
            // The promise: a bucket is at most 1/32 as wide as its lowest value (exact below 64).
            assert!((high - low) * u64::from(SUB) <= low.max(1) || high - low == 1);
            previous = index;
        }
        assert_eq!(index_of(HIGHEST_US), BUCKETS - 1);
        assert_eq!(BUCKETS, 698);
    }

    #[test]
    fn chunks_hold_every_index_above_the_inline_ones() {
        let buckets = Buckets::new();
        for value in [
            0,
            1,
            63,
            64,
            65,
            1_000,
            10_000,
            59_999_999,
            HIGHEST_US,
            u64::MAX,
        ] {
            buckets.counter(value).fetch_add(1, Ordering::Relaxed);
        }
        let mut counts = [0u64; BUCKETS];
        buckets.add_to(&mut counts);
        let histogram = PollHistogram::from_counts(&counts);
        assert_eq!(histogram.len(), 10);
        assert_eq!(histogram.min(), 1);
        assert!(histogram.max() >= HIGHEST_US);
    }

    proptest! {
        /// Quantiles of random data from 1 µs to 60 s are within 3 % of the exact ones.
        #[test]
        fn quantiles_within_three_percent(
            exponents in proptest::collection::vec(0.0f64..17.91, 1..2_000),
            quantile in 0.0f64..=1.0,
        ) {
            let mut values: Vec<u64> =
                exponents.iter().map(|e| e.exp().round().max(1.0) as u64).collect();
            let histogram = PollHistogram::from_values(values.iter().copied());
            values.sort_unstable();
            let rank = ((quantile * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let exact = values[rank - 1] as f64;
            let estimate = histogram.value_at_quantile(quantile) as f64;
            prop_assert!(
                (estimate - exact).abs() <= exact * 0.03,
                "q{quantile}: {estimate} vs exact {exact}"
            );
            let max = *values.last().unwrap() as f64;
            prop_assert!(histogram.max() as f64 >= max && histogram.max() as f64 <= max * 1.033);
        }
    }
}
