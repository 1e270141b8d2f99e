//! Bridges into the metrics systems an application already runs: each publishes the figures of
//! a [`Report`](crate::Report) (per label, so with the report's cardinality bound,
//! `max_labels`), off every hot path, from a snapshot taken when the bridge asks for it.
//!
//! Per label only, with the threshold: the instance's own sections of `/debug/hogs/metrics`
//! (the lag probe's summary and the delay it suffered, attributed or not, the runtime's figures
//! and the watchdog's captures) are not bridged. tokio-metrics' own integrations carry the
//! runtime's figures; hogwatch's instance series would come through the schema as one list,
//! as the labels' do, rather than one counter at a time.

#[cfg(feature = "metrics")]
pub(crate) mod metrics;
#[cfg(feature = "opentelemetry")]
pub(crate) mod opentelemetry;

use crate::recorder::PollHistogram;

/// For each bucket of `now` that gained polls since `before` (same window): the bucket's value
/// and how many polls it gained.
pub(crate) fn added_polls<'a>(
    now: &'a PollHistogram,
    before: &'a PollHistogram,
) -> impl Iterator<Item = (u64, u64)> + 'a {
    let mut before = before.buckets().peekable();
    now.buckets().filter_map(move |bucket| {
        while before.next_if(|old| old.low_us < bucket.low_us).is_some() {}
        let had = before
            .next_if(|old| old.low_us == bucket.low_us)
            .map_or(0, |old| old.count);
        let added = bucket.count.saturating_sub(had);
        (added > 0).then(|| (bucket.value_us(), added))
    })
}
