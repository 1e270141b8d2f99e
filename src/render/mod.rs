//! Renderers: plain functions from a [`Report`](crate::Report) to text in one format each.

#[cfg(feature = "watchdog")]
pub(crate) mod flamegraph;
pub(crate) mod html;
pub(crate) mod prometheus;
pub(crate) mod text;

/// What to do about a stall of this cause (`CauseCount::cause`): one line, for the text report
/// and the page.
pub(crate) fn hint(cause: &str) -> Option<&'static str> {
    Some(match cause {
        "cpu" => {
            "send the cached bytes as they are, or move the work to spawn_blocking / a thread pool"
        }
        "sleep" => "use tokio::time::sleep",
        "lock" => "shorten the critical section, or use tokio::sync::Mutex",
        "io" => "use the async API (tokio::fs, an async client), or spawn_blocking",
        "wait" => "use tokio::process",
        "preempted" => "the machine is oversubscribed: this code is the victim",
        _ => return None,
    })
}

/// The distinct causes of `causes`, summed over their system calls, most frequent first.
pub(crate) fn by_cause(causes: &[crate::CauseCount]) -> Vec<(&'static str, u64)> {
    let mut summed: Vec<(&'static str, u64)> = Vec::new();
    for cause in causes {
        match summed.iter_mut().find(|(name, _)| *name == cause.cause) {
            Some((_, count)) => *count = count.saturating_add(cause.count),
            None => summed.push((cause.cause, cause.count)),
        }
    }
    summed.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    summed
}
