//! Without the `watchdog` feature: watched polls publish nothing and cost nothing extra.

use crate::detector::Shared;
use crate::stats::LabelStats;

/// Does nothing: there is no watchdog to tell.
pub(crate) struct InPoll;

impl InPoll {
    #[inline(always)]
    pub(crate) fn enter(_shared: &Shared, _stats: &LabelStats, _start_raw: u64) -> Self {
        Self
    }

    #[inline(always)]
    pub(crate) fn exit(self) {}
}

/// Does nothing: there is no watchdog to tell.
#[cfg(tokio_unstable)]
#[derive(Clone, Copy)]
pub(crate) struct TaskPoll;

#[cfg(tokio_unstable)]
impl TaskPoll {
    pub(crate) const NONE: Self = Self;

    #[inline(always)]
    pub(crate) fn wanted(_shared: &Shared) -> bool {
        false
    }

    #[inline(always)]
    pub(crate) fn enter(_shared: &Shared, _stats: &LabelStats, _start_raw: u64) -> Self {
        Self
    }

    #[inline(always)]
    pub(crate) fn exit(self) {}
}
