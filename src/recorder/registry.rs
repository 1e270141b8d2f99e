//! The bounded map from label to statistics.
//!
//! A watched future looks its label up once, when it is created, and keeps an `Arc<Label>`; each
//! poll then touches only that label's storage. The lock is taken per watched future (a read
//! lock, except the first time a label is seen), never per poll.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::histogram::BUCKETS;
use super::label::{Label, LabelKind, LabelSnapshot};

/// The label under which polls of labels beyond `max_labels` are counted.
pub const OTHER_LABEL: &str = "<other>";

/// The longest label kept, in bytes: longer ones are cut (at a character boundary) and end in
/// [`CUT_MARKER`], so a client cannot make one label cost more than this in every report.
pub const MAX_LABEL_BYTES: usize = 256;
/// What ends a label that was cut to [`MAX_LABEL_BYTES`].
pub const CUT_MARKER: &str = "…";

/// `label`, cut to [`MAX_LABEL_BYTES`] if it is longer.
pub(crate) fn cap(label: &str) -> Cow<'_, str> {
    if label.len() <= MAX_LABEL_BYTES {
        return Cow::Borrowed(label);
    }
    let mut end = MAX_LABEL_BYTES - CUT_MARKER.len();
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{CUT_MARKER}", &label[..end]))
}

pub(crate) struct Registry {
    labels: RwLock<HashMap<Arc<str>, Arc<Label>>>,
    other: Arc<Label>,
    max_labels: usize,
    folded: AtomicU64,
}

impl Registry {
    pub(crate) fn new(max_labels: usize) -> Self {
        Self {
            labels: RwLock::new(HashMap::new()),
            other: Arc::new(Label::new(Arc::from(OTHER_LABEL), LabelKind::Other)),
            max_labels,
            folded: AtomicU64::new(0),
        }
    }

    /// The statistics of `label` (cut to [`MAX_LABEL_BYTES`]), created on first sight as `kind`;
    /// past `max_labels` distinct labels, the shared `<other>` entry (and the fold is counted).
    pub(crate) fn get(&self, label: &str, kind: LabelKind) -> Arc<Label> {
        let label = cap(label);
        if label == OTHER_LABEL {
            return self.other.clone();
        }
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is never left half-updated by our code, so keep using it.
        if let Some(found) = self
            .labels
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&*label)
        {
            return found.clone();
        }
        let mut labels = self
            .labels
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = labels.get(&*label) {
            return found.clone();
        }
        if labels.len() >= self.max_labels {
            self.folded.fetch_add(1, Ordering::Relaxed);
            return self.other.clone();
        }
        let name: Arc<str> = Arc::from(label);
        let created = Arc::new(Label::new(name.clone(), kind));
        labels.insert(name, created.clone());
        created
    }

    /// The `<other>` label.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    pub(crate) fn other(&self) -> &Arc<Label> {
        &self.other
    }

    /// The label at `address` (an identity published by a poll in progress), if it is this
    /// registry's. Takes the read lock: for the watchdog, never the hot path.
    #[cfg_attr(not(feature = "watchdog"), allow(dead_code))]
    pub(crate) fn find(&self, address: usize) -> Option<Arc<Label>> {
        let matches = |label: &&Arc<Label>| Arc::as_ptr(label) as usize == address;
        if matches(&&self.other) {
            return Some(self.other.clone());
        }
        self.labels
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .find(matches)
            .cloned()
    }

    /// Every label's window (and `<other>`'s), and the folds counted.
    /// One pass over the counters; the lock is held only to copy the list of labels.
    pub(crate) fn snapshot(&self, reset: bool, ticks: super::Ticks) -> (Vec<LabelSnapshot>, u64) {
        let labels: Vec<Arc<Label>> = self
            .labels
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        let mut scratch = Box::new([0u64; BUCKETS]);
        let snapshots = labels
            .iter()
            .chain(std::iter::once(&self.other))
            .map(|label| label.snapshot(reset, ticks, &mut scratch))
            .collect();
        let folded = if reset {
            self.folded.swap(0, Ordering::Relaxed)
        } else {
            self.folded.load(Ordering::Relaxed)
        };
        (snapshots, folded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_labels_are_cut_at_a_character_boundary() {
        assert_eq!(cap("GET /x"), "GET /x");
        let long = "é".repeat(300);
        let cut = cap(&long);
        assert!(cut.len() <= MAX_LABEL_BYTES, "{}", cut.len());
        assert!(cut.ends_with(CUT_MARKER));
        assert!(cut.len() > MAX_LABEL_BYTES - 8);
        let exact = "x".repeat(MAX_LABEL_BYTES);
        assert_eq!(cap(&exact), exact.as_str());
    }

    #[test]
    fn labels_past_the_bound_fold_into_other() {
        let registry = Registry::new(2);
        let a = registry.get("a", LabelKind::Watch);
        registry.get("b", LabelKind::Route);
        let c = registry.get("c", LabelKind::Watch);
        assert!(Arc::ptr_eq(&c, registry.other()));
        assert!(Arc::ptr_eq(&a, &registry.get("a", LabelKind::Task)));
        assert_eq!(a.kind, LabelKind::Watch, "the first kind wins");
        let ticks = super::super::Ticks::of(&quanta::Clock::new());
        assert_eq!(registry.snapshot(false, ticks).1, 1);
    }
}
