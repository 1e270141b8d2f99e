//! Renderers: plain functions from a [`Report`](crate::Report) to text in one format each.

#[cfg(feature = "watchdog")]
pub(crate) mod flamegraph;
pub(crate) mod html;
pub(crate) mod prometheus;
pub(crate) mod text;

/// The distinct causes of `causes`, summed over their system calls, most frequent first.
pub(crate) fn by_cause(causes: &[crate::CauseCount]) -> Vec<(crate::StallCause, u64)> {
    let mut summed: Vec<(crate::StallCause, u64)> = Vec::new();
    for cause in causes {
        match summed.iter_mut().find(|(name, _)| *name == cause.cause) {
            Some((_, count)) => *count = count.saturating_add(cause.count),
            None => summed.push((cause.cause, cause.count)),
        }
    }
    summed.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
    summed
}
