//! The inline SVG histogram of a label's poll durations, in log2 buckets.

use crate::recorder::PollHistogram;

use super::writer::Html;
use super::{duration, plural};

/// Histogram buckets: bucket `i` holds polls of `2^i` to `2^(i+1)` µs; the last one runs on to
/// 60 s, the largest value a poll histogram records.
pub(crate) const BUCKETS: usize = 26;
/// Width of one bucket in the SVG, in pixels.
const BAR_WIDTH: u32 = 5;
const CHART_WIDTH: u32 = BUCKETS as u32 * BAR_WIDTH;
const CHART_HEIGHT: u32 = 28;

/// One non-empty bucket of the histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bar {
    /// Index of the bucket, 0 .. `BUCKETS`.
    pub(crate) bucket: usize,
    /// Polls in it.
    pub(crate) count: u64,
}

/// The bucket a duration of `us` microseconds falls in.
pub(crate) fn bucket_of(us: u64) -> usize {
    let log2 = 63 - us.max(1).leading_zeros() as usize;
    log2.min(BUCKETS - 1)
}

/// The smallest duration in `bucket`, and the smallest in the next one (the last bucket ends at 60 s).
fn bucket_range(bucket: usize) -> (u64, u64) {
    let low = 1u64 << bucket;
    let high = if bucket + 1 >= BUCKETS {
        60_000_000
    } else {
        low << 1
    };
    (low, high)
}

/// The non-empty log2 buckets of `histogram`, shortest first; their counts sum to its `len()`.
pub(crate) fn bars(histogram: &PollHistogram) -> Vec<Bar> {
    let mut counts = [0u64; BUCKETS];
    for bucket in histogram.buckets() {
        // The histogram's buckets never straddle a power of two, so every poll of a bucket
        // lands in the same bar.
        let count = &mut counts[bucket_of(bucket.low_us)];
        *count = count.saturating_add(bucket.count);
    }
    counts
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(bucket, count)| Bar {
            bucket,
            count: *count,
        })
        .collect()
}

/// Where the threshold line goes, in pixels from the left: `log2(threshold)` bucket widths.
fn threshold_x(threshold_us: u64) -> f64 {
    let x = (threshold_us.max(1) as f64).log2() * f64::from(BAR_WIDTH);
    x.min(f64::from(CHART_WIDTH))
}

/// The inline SVG histogram: bars on log-scaled durations (and counts), the threshold as a line.
pub(super) fn render_histogram(
    label: &str,
    histogram: &PollHistogram,
    threshold_us: u64,
    html: &mut Html<'_>,
) {
    html.raw("<svg class=\"hist\"")
        .attr("width", CHART_WIDTH)
        .attr("height", CHART_HEIGHT)
        .attr("viewBox", format_args!("0 0 {CHART_WIDTH} {CHART_HEIGHT}"))
        .raw(" role=\"img\"")
        .attr("aria-label", format_args!("poll durations of {label}"))
        .raw("><title>")
        .text(format_args!(
            "Poll durations of {label}, 1 µs to 60 s on a log scale; the line is the threshold, {}",
            duration(threshold_us)
        ))
        .raw("</title>");
    let bars = bars(histogram);
    let tallest = bars.iter().map(|bar| bar.count).max().unwrap_or(0);
    let threshold_bucket = bucket_of(threshold_us);
    let usable = f64::from(CHART_HEIGHT - 1);
    for bar in &bars {
        // Log-scaled heights, at least 2 px: one slow poll among millions must still show.
        let scale = ((bar.count as f64).ln_1p() / (tallest as f64).ln_1p()).clamp(0.0, 1.0);
        let height = (2.0 + (usable - 2.0) * scale).min(usable);
        let class = match bar.bucket.cmp(&threshold_bucket) {
            std::cmp::Ordering::Less => "fast",
            std::cmp::Ordering::Equal => "near",
            std::cmp::Ordering::Greater => "slow",
        };
        let (low, high) = bucket_range(bar.bucket);
        html.raw("<rect class=\"")
            .raw(class)
            .raw("\"")
            .attr("x", bar.bucket as u32 * BAR_WIDTH)
            .attr("y", format_args!("{:.1}", usable - height))
            .attr("width", BAR_WIDTH - 1)
            .attr("height", format_args!("{height:.1}"))
            .raw("><title>")
            .text(format_args!(
                "{} to {}: {} {}",
                duration(low),
                duration(high),
                bar.count,
                plural(bar.count, "poll", "polls"),
            ))
            .raw("</title></rect>");
    }
    // Faint ticks at 1 ms and 1 s.
    for tick_us in [1_000, 1_000_000] {
        line(
            html,
            "<line class=\"tick\"",
            threshold_x(tick_us),
            CHART_HEIGHT - 4,
        );
    }
    html.raw("<line class=\"axis\" x1=\"0\"")
        .attr("y1", CHART_HEIGHT)
        .attr("x2", CHART_WIDTH)
        .attr("y2", CHART_HEIGHT)
        .raw("/>");
    line(html, "<line class=\"thr\"", threshold_x(threshold_us), 0);
    html.raw("</svg>");
}

/// A vertical line at `x` from `top` to the bottom of the chart; `open` is its tag and class.
fn line(html: &mut Html<'_>, open: &'static str, x: f64, top: u32) {
    html.raw(open)
        .attr("x1", format_args!("{x:.1}"))
        .attr("y1", top)
        .attr("x2", format_args!("{x:.1}"))
        .attr("y2", CHART_HEIGHT)
        .raw("/>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[u64]) -> PollHistogram {
        PollHistogram::from_values(values.iter().copied())
    }

    #[test]
    fn bars_sum_to_the_histogram_and_land_in_log2_buckets() {
        let values = [
            1, 1, 2, 3, 1_000, 1_023, 1_024, 16_383, 16_384, 10_000, 10_000, 59_000_000, 60_000_000,
        ];
        let histogram = histogram(&values);
        let bars = bars(&histogram);
        assert_eq!(
            bars.iter().map(|bar| bar.count).sum::<u64>(),
            histogram.len()
        );
        let expected = [
            Bar {
                bucket: 0,
                count: 2,
            },
            Bar {
                bucket: 1,
                count: 2,
            },
            Bar {
                bucket: 9,
                count: 2,
            },
            Bar {
                bucket: 10,
                count: 1,
            },
            Bar {
                bucket: 13,
                count: 3,
            },
            Bar {
                bucket: 14,
                count: 1,
            },
            Bar {
                bucket: 25,
                count: 2,
            },
        ];
        assert_eq!(bars, expected);
        // Bars are sorted and distinct.
        assert!(bars.windows(2).all(|pair| pair[0].bucket < pair[1].bucket));
    }

    #[test]
    fn bars_of_many_values_sum_to_the_total() {
        let values: Vec<u64> = (0..5_000u64)
            .map(|i| ((1 + i.wrapping_mul(2_654_435_761) % 60_000_000) >> (i % 24)).max(1))
            .collect();
        let histogram = histogram(&values);
        let bars = bars(&histogram);
        assert_eq!(bars.iter().map(|bar| bar.count).sum::<u64>(), 5_000);
        for bar in &bars {
            let (low, high) = bucket_range(bar.bucket);
            let inside = values
                .iter()
                .filter(|&&v| bucket_of(v) == bar.bucket)
                .count() as u64;
            assert_eq!(inside, bar.count, "{low}..{high}");
        }
    }

    #[test]
    fn empty_histogram_has_no_bars() {
        let histogram = histogram(&[]);
        assert!(bars(&histogram).is_empty());
        let mut svg = String::new();
        render_histogram("x", &histogram, 10_000, &mut Html::new(&mut svg));
        assert!(!svg.contains("<rect"), "{svg}");
        assert!(svg.contains("class=\"thr\""), "{svg}");
    }

    #[test]
    fn threshold_marker_lands_in_its_bucket() {
        for (threshold_us, bucket) in [
            (1, 0),
            (2, 1),
            (1_000, 9),
            (8_191, 12),
            (8_192, 13),
            (10_000, 13),
            (16_383, 13),
            (59_999_999, 25),
        ] {
            assert_eq!(bucket_of(threshold_us), bucket, "{threshold_us}");
            let x = threshold_x(threshold_us);
            let drawn = (x / f64::from(BAR_WIDTH)).floor() as usize;
            assert_eq!(drawn, bucket, "{threshold_us} at x = {x}");
            let (low, high) = bucket_range(bucket);
            assert!(low <= threshold_us && threshold_us < high);
        }
        // Bars above the threshold's bucket are drawn as slow, its own bucket as near.
        let mut svg = String::new();
        render_histogram(
            "x",
            &histogram(&[100, 10_000, 50_000]),
            10_000,
            &mut Html::new(&mut svg),
        );
        assert!(svg.contains("<rect class=\"fast\" x=\"30\""), "{svg}");
        assert!(svg.contains("<rect class=\"near\" x=\"65\""), "{svg}");
        assert!(svg.contains("<rect class=\"slow\" x=\"75\""), "{svg}");
        assert!(svg.contains("<line class=\"thr\" x1=\"66.4\""), "{svg}");
    }
}
