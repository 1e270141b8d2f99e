//! Names for the runtime watchdog's stacks, and a task stall's label: from the program's symbol
//! table until the naming thread has loaded the debug information, then from `backtrace`.

use super::{signal, symbols};

/// How many frames below the harness are named to tell a scheduler from the blocking pool.
#[cfg(target_os = "linux")]
const BELOW_FRAMES: usize = 16;

/// The label of a task stall whose stack could not be had or named.
const UNKNOWN_TASK: &str = "task <unknown>";

/// Whether `frames` (innermost first, down to tokio's task harness) were taken inside a task
/// poll: the harness is there, and no `block_in_place`, blocking task or run loop above it (a
/// harness with tokio's run loop inward of it is the worker thread's own, see
/// [`run_loop_within`]).
pub(super) fn in_task(frames: &[symbols::Frame]) -> bool {
    let names: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
    let within = symbols::within_poll(&names);
    within.len() < names.len()
        && !symbols::is_block_on(&names[within.len()])
        && !offloaded(within)
        // A worker parked inside the blocking pool's harness: one that took over a worker's
        // queue at `block_in_place` (where `BlockingTask`'s frame may be inlined away).
        && !within.iter().any(|name| symbols::is_park(name))
        && !run_loop_within(frames)
}

/// Whether `frames` (innermost first, down to tokio's `block_on`) were taken inside a poll of
/// the future given to `block_on`, in the app's own code (not parked: tokio parks below the
/// poll), and not in `block_in_place`.
pub(super) fn in_body(frames: &[symbols::Frame], prefixes: &[String]) -> bool {
    let names: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
    let within = symbols::within_poll(&names);
    within.len() < names.len()
        && symbols::is_block_on(&names[within.len()])
        && !offloaded(within)
        // `block_on` parks its thread below the poll, not within it.
        && !within.iter().any(|name| symbols::is_park(name))
        && frames[..within.len()].iter().any(|frame| {
            !frame.system
                && frame.name != symbols::UNKNOWN
                && !symbols::is_runtime(&frame.name, prefixes)
        })
}

/// Whether a poll blocked in a system call (`frames` innermost first) waits inside tokio's own
/// code: the frames from the call out to the poll's first frame outside the runtime include
/// tokio's runtime internals (a `tokio::spawn` waiting for the runtime's queue lock, a timer's
/// lock). tokio holds those for microseconds: a long wait means their holder waits for a CPU on
/// an oversubscribed machine, not that the poll's code blocks. (tokio's own blocking calls,
/// `blocking_lock` and `Handle::block_on`, panic inside a runtime.)
pub(super) fn waits_in_tokio(frames: &[symbols::Frame], prefixes: &[String]) -> bool {
    frames
        .iter()
        .take_while(|frame| {
            frame.system
                || frame.name == symbols::UNKNOWN
                || symbols::is_runtime(&frame.name, prefixes)
        })
        .any(|frame| {
            frame.name.starts_with("tokio::runtime::") || frame.name.starts_with("tokio::loom::")
        })
}

/// Whether `frames` (innermost first, a stack with no task poll) were taken in tokio's scheduler
/// between two polls: a frame of the scheduler's, and none of the app's from the interrupted
/// one out to it (below it, a current-thread runtime's caller of `block_on` may be the app's).
/// Not in `block_in_place`, whose closure a release build may inline into it. The scheduler's
/// frame also tells a worker from a thread of the blocking pool.
pub(super) fn between_polls(frames: &[symbols::Frame], prefixes: &[String]) -> bool {
    let Some(scheduler) = scheduler(frames) else {
        return false;
    };
    !frames
        .iter()
        .any(|frame| frame.name.contains("block_in_place"))
        && frames[..scheduler].iter().all(|frame| {
            frame.system
                || frame.name == symbols::UNKNOWN
                || symbols::is_runtime(&frame.name, prefixes)
        })
}

/// The innermost of `frames` that is tokio's scheduler's, if any: a stack with one is a worker's
/// (or the thread's that runs a current-thread runtime), never the blocking pool's.
pub(super) fn scheduler(frames: &[symbols::Frame]) -> Option<usize> {
    frames.iter().position(|frame| {
        frame
            .name
            .trim_start_matches('<')
            .starts_with("tokio::runtime::scheduler::")
    })
}

/// Whether `frames` (innermost first, down to and with a task harness) show tokio's run loop
/// inward of the harness (`Context::run`, `run_task`, a worker's `run`): a task's poll is never
/// called from within another, so the harness is not the task's but the one a multi-thread
/// worker itself runs in (in a blocking task): the worker is between two polls, or the unwind
/// lost the task's frames (seen in a release build from the vDSO's `clock_gettime`, under a task
/// spinning on `Instant::elapsed`, whose worker's blocking-task frame was inlined away: the
/// stall was reported a second time, as `task <unknown>`).
fn run_loop_within(frames: &[symbols::Frame]) -> bool {
    let inward = &frames[..frames.len().saturating_sub(1)];
    inward.iter().any(|frame| {
        let mut name = frame.name.as_str();
        while let Some(outer) = name.strip_suffix("::{{closure}}") {
            name = outer;
        }
        name.starts_with("tokio::runtime::scheduler::")
            && (name.ends_with("::Context::run")
                || name.ends_with("::Context::run_task")
                || name.ends_with("::worker::run"))
    })
}

/// Whether a poll's frames are inside tokio's sanctioned ways to block: `block_in_place`, or a
/// `spawn_blocking` closure.
fn offloaded(within: &[String]) -> bool {
    within.iter().any(|name| {
        name.contains("block_in_place") || name.contains("::blocking::task::BlockingTask")
    })
}

/// Names stacks on the watchdog thread, with a `Symbolizer` of its own (which names from the
/// program's symbol table until `backtrace` has loaded the debug information, so a stall right
/// after `build()` is named in time).
#[cfg(target_os = "linux")]
pub(super) struct Names {
    symbolizer: symbols::Symbolizer,
}

#[cfg(target_os = "linux")]
impl Names {
    pub(super) fn new() -> Self {
        Self {
            symbolizer: symbols::Symbolizer::default(),
        }
    }

    /// The names of `raw`'s frames from the interrupted one to tokio's task harness (or all of
    /// them, without the harness), and the index in `raw.ips` of the harness's frame; `None` if
    /// nothing can name them yet. The executor's frames below the harness name nothing of the
    /// task and are left unnamed: naming an address `backtrace` has not seen costs tens of
    /// milliseconds the first time in a debug build.
    ///
    /// With `below`, also names the frames below the harness until a scheduler's or the
    /// blocking pool's ([`Named::scheduler`]): a thread that never parked may be either.
    pub(super) fn frames_to_harness(
        &mut self,
        raw: &signal::RawStack,
        below: bool,
    ) -> Option<Named> {
        // From the interrupted instruction on: the signal handler's frames before it (and the C
        // library's signal trampoline) are never named.
        let start = raw.ips.iter().position(|ip| *ip == raw.pc).unwrap_or(0);
        let mut frames = Vec::new();
        let mut names = Vec::new();
        for (at, ip) in raw.ips.iter().enumerate().skip(start) {
            let mut named = self.frames(*ip, at == start)?;
            if at >= raw.uncertain_from {
                for frame in &mut named {
                    frame.name.push_str(symbols::UNCERTAIN);
                }
            }
            names.extend(named.iter().map(|frame| frame.name.clone()));
            frames.extend(named);
            let within = symbols::within_poll(&names).len();
            if within < names.len() {
                frames.truncate(within + 1);
                let scheduler = match below {
                    true => self.scheduler_below(&raw.ips[at + 1..]),
                    false => None,
                };
                return Some(Named {
                    frames,
                    harness: Some(at),
                    scheduler,
                });
            }
        }
        Some(Named {
            frames,
            harness: None,
            scheduler: None,
        })
    }

    /// Whether the frames below a harness (`ips`, from its caller down) are a scheduler's,
    /// which polls async tasks (`Some(true)`), or the blocking pool's, which runs
    /// `spawn_blocking` closures through the same harness (`Some(false)`); `None` if neither
    /// shows within [`BELOW_FRAMES`].
    fn scheduler_below(&mut self, ips: &[usize]) -> Option<bool> {
        // From the symbol table where there is one: it knows tokio's functions by address,
        // before and after the debug information is loaded, and naming the executor's frames
        // with `backtrace` costs tens of milliseconds each the first time in a debug build.
        if let Some(table) = symbols::symbol_table() {
            return ips
                .iter()
                .take(BELOW_FRAMES)
                .find_map(|ip| table.tokio_scheduler(ip.saturating_sub(1)));
        }
        for ip in ips.iter().take(BELOW_FRAMES) {
            for frame in self.frames(*ip, false)? {
                if frame.name.starts_with("tokio::runtime::scheduler::") {
                    return Some(true);
                }
                if frame.name.starts_with("tokio::runtime::blocking::") {
                    return Some(false);
                }
            }
        }
        None
    }

    /// The frames at `ip` (more than one where functions were inlined into it), a return address
    /// unless it is the interrupted instruction (`is_pc`).
    fn frames(&mut self, ip: usize, is_pc: bool) -> Option<Vec<symbols::Frame>> {
        // A return address is just past its call: look up the call itself.
        let call = if is_pc { ip } else { ip.saturating_sub(1) };
        Some(self.symbolizer.frames(&[call], call, 1))
    }
}

/// A stack named down to tokio's task harness.
#[cfg(target_os = "linux")]
#[derive(Default)]
pub(super) struct Named {
    /// Innermost first, the harness's frame last.
    pub(super) frames: Vec<symbols::Frame>,
    /// Where the harness's frame is in the raw stack's addresses (`None`: not in a task poll).
    pub(super) harness: Option<usize>,
    /// Below the harness, a scheduler (an async task's poll) or the blocking pool (a
    /// `spawn_blocking` closure); `None` if not looked at or not seen.
    pub(super) scheduler: Option<bool>,
}

/// The label of a task stall: `task ` and the first frame above tokio's task harness (outermost
/// first) that is not the runtime's, without its `{{closure}}` suffixes (`block_on ` and the same
/// frame above tokio's `block_on` for a stall of the future given to it); [`UNKNOWN_TASK`] if
/// there is none.
pub(super) fn task_label(frames: &[symbols::Frame], prefixes: &[String]) -> String {
    let names: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
    let within = symbols::within_poll(&names);
    if within.len() == names.len() {
        return UNKNOWN_TASK.to_string();
    }
    // The future given to `block_on` is no task.
    let kind = match symbols::is_block_on(&names[within.len()]) {
        true => "block_on",
        false => "task",
    };
    frames[..within.len()]
        .iter()
        .rev()
        .find(|frame| {
            !frame.system
                && frame.name != symbols::UNKNOWN
                && !symbols::is_runtime(&frame.name, prefixes)
        })
        .map_or_else(
            || UNKNOWN_TASK.to_string(),
            |frame| {
                let mut name = frame.name.as_str();
                while let Some(outer) = name.strip_suffix("::{{closure}}") {
                    name = outer;
                }
                format!("{kind} {name}")
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<symbols::Frame> {
        names
            .iter()
            .map(|name| symbols::Frame {
                name: name.to_string(),
                system: *name == "epoll_wait",
            })
            .collect()
    }

    fn defaults() -> Vec<String> {
        symbols::DEFAULT_RUNTIME_PREFIXES
            .iter()
            .map(|prefix| prefix.to_string())
            .collect()
    }

    /// Stacks the runtime watchdog's samples caught in a debug build (some frames left out).
    #[test]
    fn a_worker_in_the_scheduler_is_between_polls_and_app_code_outside_a_task_is_not() {
        let prefixes = defaults();
        // Polling the driver while tasks yield (a worker that never parked).
        let driver = frames(&[
            "epoll_wait",
            "mio::poll::Poll::poll",
            "tokio::runtime::io::driver::Driver::turn",
            "tokio::runtime::scheduler::multi_thread::park::Parker::park_timeout",
            "tokio::runtime::scheduler::multi_thread::worker::Context::park_yield",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run",
            "std::thread::Builder::spawn_unchecked_::{{closure}}",
        ]);
        assert!(between_polls(&driver, &prefixes));
        // Right after a poll, in a trait impl's frame.
        let after_a_poll = frames(&[
            "<tokio::task::coop::with_budget::ResetGuard as core::ops::drop::Drop>::drop",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
        ]);
        assert!(between_polls(&after_a_poll, &prefixes));
        // In the scheduler's statistics, converting a `u128` with the compiler's intrinsic (a
        // worker left alone for 8 thresholds after this sample missed a 400 ms stall).
        let intrinsic = frames(&[
            "<u128>::unchecked_shl",
            "<u128>::wrapping_shl",
            "compiler_builtins::float::conv::int_to_float::u128_to_f64_bits",
            "compiler_builtins::float::conv::__floatuntidf",
            "__floatuntidf",
            "tokio::runtime::scheduler::multi_thread::stats::Stats::end_processing_scheduled_tasks",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run",
        ]);
        assert!(between_polls(&intrinsic, &prefixes));
        // A current-thread runtime between two polls: the app's `main` below is not in it.
        let current_thread = frames(&[
            "tokio::runtime::scheduler::current_thread::CoreGuard::block_on::{{closure}}",
            "tokio::runtime::runtime::Runtime::block_on",
            "my_app::main",
        ]);
        assert!(between_polls(&current_thread, &prefixes));
        // The future given to `block_on`, running the app's code.
        let body = frames(&[
            "my_app::load_config",
            "my_app::main::{{closure}}",
            "tokio::runtime::scheduler::current_thread::CoreGuard::block_on::{{closure}}",
            "my_app::main",
        ]);
        assert!(!between_polls(&body, &prefixes));
        // A `block_in_place` closure, even with no frame of the app's left (inlined).
        let offloaded = frames(&[
            "std::thread::sleep",
            "tokio::runtime::scheduler::multi_thread::worker::block_in_place",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
        ]);
        assert!(!between_polls(&offloaded, &prefixes));
        // The blocking pool waiting for work: no scheduler, no worker.
        let pool = frames(&[
            "std::sync::condvar::Condvar::wait_timeout",
            "tokio::runtime::blocking::pool::Inner::run",
        ]);
        assert!(!between_polls(&pool, &prefixes));
        assert!(!between_polls(&[], &prefixes));
    }

    /// A release build's sample of a task spinning on `Instant::elapsed`, unwound from the
    /// vDSO: the task's frames are lost, and the harness found is the worker thread's own.
    #[test]
    fn the_run_loop_inward_of_a_harness_is_no_task_poll() {
        let lost = frames(&[
            "[unknown]",
            "__GI___clock_gettime",
            "<std::sys::pal::unix::time::Timespec>::now",
            "<std::time::Instant>::elapsed",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run",
            "tokio::runtime::context::scoped::Scoped<T>::set",
            "tokio::runtime::context::runtime::enter_runtime",
            "tokio::runtime::scheduler::multi_thread::worker::run",
            "tokio::runtime::task::core::Core<T,S>::poll",
        ]);
        assert!(run_loop_within(&lost));
        // A task's poll, which spawns (the scheduler's functions, not its run loop).
        let task = frames(&[
            "tokio::runtime::scheduler::multi_thread::worker::<impl tokio::runtime::scheduler::multi_thread::handle::Handle>::schedule_task",
            "tokio::runtime::scheduler::multi_thread::handle::Handle::spawn",
            "tokio::task::spawn::spawn",
            "my_app::refresh::{{closure}}",
            "tokio::runtime::task::core::Core<T,S>::poll::{{closure}}",
        ]);
        assert!(!run_loop_within(&task));
        // The harness itself is below the poll: a worker's run loop below it is as it should be.
        let harness_only = frames(&[
            "my_app::refresh::{{closure}}",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
        ]);
        assert!(!run_loop_within(&harness_only));
    }
}
