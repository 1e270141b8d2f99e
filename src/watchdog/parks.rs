//! When a worker of a runtime `Detector::watch_current_runtime` found parks. No tokio callback
//! says so there: at each check the watchdog reads each such worker's `/proc/…/syscall` (one
//! small read; a parked worker is never signalled) and compares the call it is in with the calls
//! it was seen parking in before. Those are learnt from a sample's stack: the call's number and
//! first argument (the futex word of the worker's condition variable, or the I/O driver's epoll
//! descriptor), both the worker's own for its life.

use std::collections::HashMap;

use super::activity::{self, Activity, Registers};
use super::symbols;
use super::workers::Worker;
use crate::recorder::Recorder;

/// A system call a worker parks in: its number and first argument.
type Park = (libc::c_long, usize);

/// How many park calls are kept per worker (a worker parks on its condition variable, or in the
/// driver with or without a timeout: the same descriptor).
const MAX_PARKS: usize = 4;

/// The park calls learnt, by `Worker` address, with the check each worker was last seen at.
#[derive(Default)]
pub(super) struct Parks {
    learnt: HashMap<usize, (u64, Vec<Park>)>,
}

impl Parks {
    /// Whether `worker` is parked now, in one of the calls it was seen parking in; its
    /// `running_since` then reads as tokio's callbacks would have set it, to this check.
    pub(super) fn observe(
        &mut self,
        reader: &mut activity::Reader,
        recorder: &Recorder,
        worker: &Worker,
        generation: u64,
    ) {
        if worker.gone.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let (seen, calls) = self.learnt.entry(id(worker)).or_default();
        *seen = generation;
        let parked = match reader.read(worker.tid) {
            Activity::Syscall(nr, registers) => calls.contains(&(nr, registers.arg0)),
            Activity::User => false,
            Activity::Unknown | Activity::Unreadable => return,
        };
        let now = recorder.clock.raw();
        let running = worker
            .running_since
            .load(std::sync::atomic::Ordering::Acquire)
            != 0;
        match (parked, running) {
            (true, true) => worker.parks(now),
            (false, false) => worker.unparks(now),
            _ => {}
        }
    }

    /// Learns the call of a sample outside any task poll, in system call `nr` entered with
    /// `registers`, if its stack `frames` shows the worker parked (see [`is_park`]); returns
    /// whether it did.
    pub(super) fn learn(
        &mut self,
        worker: &Worker,
        nr: libc::c_long,
        registers: Registers,
        frames: &[symbols::Frame],
        runtime: &[String],
    ) -> bool {
        if !is_park(nr, frames, runtime) {
            return false;
        }
        let calls = &mut self.learnt.entry(id(worker)).or_default().1;
        let call = (nr, registers.arg0);
        if calls.len() < MAX_PARKS && !calls.contains(&call) {
            calls.push(call);
        }
        true
    }

    /// Forgets the workers not seen at check `generation` (gone, or their runtime).
    pub(super) fn retain(&mut self, generation: u64) {
        self.learnt.retain(|_, (seen, _)| *seen == generation);
    }
}

fn id(worker: &Worker) -> usize {
    std::ptr::from_ref(worker) as usize
}

/// Whether a thread outside any task poll, in system call `nr` with stack `frames`, is parked by
/// tokio: its stack shows tokio's park; or, where the stack read from `/proc` is certain only
/// for its first frames (a build without frame pointers), those are all the C library's and the
/// runtime's (`runtime`: the watchdog's prefixes), waiting on a futex or in `epoll_wait` (a
/// worker parked on its condition variable with a timeout, in a release build). The latter could
/// also be a `block_in_place` closure waiting on a contended lock whose callers could not be
/// read: a task that waits on the same lock on the same thread later would then be taken for a
/// park.
fn is_park(nr: libc::c_long, frames: &[symbols::Frame], runtime: &[String]) -> bool {
    if frames.iter().any(|frame| symbols::is_park(&frame.name)) {
        return true;
    }
    let waits = [
        libc::SYS_futex,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
    ];
    let certain = frames
        .iter()
        .take_while(|frame| !frame.name.ends_with(symbols::UNCERTAIN));
    waits.contains(&nr)
        && certain.clone().count() < frames.len()
        && certain
            .into_iter()
            .all(|frame| frame.system || symbols::is_runtime(&frame.name, runtime))
}
