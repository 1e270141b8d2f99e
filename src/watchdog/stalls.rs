//! Per-label stall statistics: how many stalls, the most frequent stacks and culprits, in
//! bounded memory.

use crate::report::{CulpritCount, StackCount};

/// The most frequent keys of a stream, approximately, in at most `capacity` entries
/// ("space-saving": a new key replaces the rarest one and inherits its count, so a key that is
/// really frequent cannot be pushed out by a crowd of rare ones).
#[derive(Debug, Default)]
pub(crate) struct TopK {
    entries: Vec<(String, u64)>,
}

impl TopK {
    pub(crate) fn record(&mut self, key: &str, capacity: usize) {
        if let Some(entry) = self.entries.iter_mut().find(|(k, _)| k == key) {
            entry.1 = entry.1.saturating_add(1);
        } else if self.entries.len() < capacity {
            self.entries.push((key.to_string(), 1));
        } else if let Some(rarest) = self.entries.iter_mut().min_by_key(|(_, count)| *count) {
            *rarest = (key.to_string(), rarest.1.saturating_add(1));
        }
    }

    /// The `n` most frequent, most frequent first.
    pub(crate) fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut sorted = self.entries.clone();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sorted.truncate(n);
        sorted
    }
}

/// What the watchdog saw for one label in the current window.
#[derive(Default)]
pub(crate) struct LabelStalls {
    pub(crate) stalls: u64,
    pub(crate) stacks: TopK,
    pub(crate) culprits: TopK,
    /// Stall warnings have their own rate limit: a slow-poll warning must not hide the stack.
    pub(crate) warn_limiter: crate::event::RateLimiter,
}

/// Distinct stacks (and culprits) tracked per label.
pub(crate) const TRACKED: usize = 32;
/// Stacks (and culprits) shown per label in a report.
pub(crate) const SHOWN: usize = 8;

impl LabelStalls {
    pub(crate) fn top_stacks(&self) -> Vec<StackCount> {
        self.stacks
            .top(SHOWN)
            .into_iter()
            .map(|(stack, count)| StackCount { stack, count })
            .collect()
    }

    pub(crate) fn top_culprits(&self) -> Vec<CulpritCount> {
        self.culprits
            .top(SHOWN)
            .into_iter()
            .map(|(culprit, count)| CulpritCount { culprit, count })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frequent_key_survives_a_crowd_of_rare_ones() {
        let mut top = TopK::default();
        for i in 0..1_000 {
            top.record("hot", 4);
            top.record(&format!("rare-{i}"), 4);
        }
        assert!(top.entries.len() <= 4);
        assert_eq!(top.top(1)[0], ("hot".to_string(), 1_000));
    }
}
