//! The stall watchdog: catches a poll while it is still blocking, records the blocked thread's
//! stack and names the culprit. See the [guide](crate::docs::watchdog).
//!
//! One room per job; none of them imports one that imports it back:
//! - `table`: what the handle, the watchdog thread and the reports share: configuration,
//!   counters, the stall table (one `stalls::LabelStalls` record per label), the warning;
//! - `check`: the watchdog thread: looks at the published polls every quarter of a threshold,
//!   samples the stalled ones within a budget and reports them;
//! - `namer`: the naming thread, which names a wrapped poll's stack and records its sample;
//! - `workers`: registration of the runtimes `Detector::watch_runtime` watches (tokio's thread
//!   callbacks) and of the ones `Detector::watch_current_runtime` finds (tasks spawned on them);
//!   `sampler`: the watchdog thread's sampling of their busy workers, with `task_names` for a
//!   task stall's stack and label, and `parks` for when a found runtime's worker parks;
//! - `stalls`: the stall record every source fills (`Sample`, `LabelStalls::record`): causes,
//!   stacks, culprits, the sampled profile, in bounded memory;
//! - `activity`: whether a stalled thread runs its own code or waits in a system call, and its
//!   CPU and run-queue clocks (`/proc`);
//! - `signal`: interrupting a thread to record its stack (`unsafe`);
//! - `scan`: the stack of a thread waiting in a system call, read without interrupting it;
//! - `unwind`: the exact, table-driven unwinder both of them use (the other `unsafe` room: it
//!   reads the loaded objects' unwind tables and the interrupted stack in place);
//! - `symbols`: names, folded stacks, culprits; `symtab`: the program's ELF symbol table, which
//!   names every function by its full path in every build profile.
//!
//! While a watched poll stays stalled the watchdog samples it at each check (every quarter of
//! the threshold), within a budget of `check::SAMPLES_PER_SECOND` for all the watched polls: each
//! sample records what the thread was doing (its cause), its stack, and its CPU time since the
//! previous sample. The runtime watchdog's samples are paced per worker instead (about two per
//! threshold while it is busy: `sampler`), outside that budget.
//!
//! A stall is counted and reported when the watchdog sees it; its stack is captured right away
//! (unless the thread waits in a system call, which a signal would interrupt), and named by a
//! thread of its own (`namer`); the program's debug information loads beside it, and names
//! come from the symbol table until then: neither a check nor a report waits for that.
//!
//! The recorder's poll path (`Recorder::begin` and `end`, used by watched futures, streams, the
//! layer's bodies and tokio's task hooks) publishes each poll in its thread's slot
//! (`crate::recorder::slot`), restoring what the thread published before, so a watched poll
//! inside a task poll is reported under its own label and the task's comes back when it
//! returns. The watchdog reads the slots; it attaches its signal target to each thread as it
//! registers (`slot::attach_with`).

#[cfg(target_os = "linux")]
mod activity;
mod check;
#[cfg(target_os = "linux")]
mod namer;
#[cfg(target_os = "linux")]
mod parks;
mod sampler;
#[cfg(target_os = "linux")]
mod scan;
#[cfg(target_os = "linux")]
mod signal;
mod stalls;
mod symbols;
#[cfg(target_os = "linux")]
mod symtab;
mod table;
#[cfg(target_os = "linux")]
mod task_names;
#[cfg(target_os = "linux")]
mod unwind;
mod workers;

pub(crate) use check::WatchdogThread;
pub(crate) use symbols::DEFAULT_RUNTIME_PREFIXES;
pub(crate) use table::{Config, SetupError, Watchdog, MIN_THRESHOLD};
pub(crate) use workers::install as install_workers;
pub(crate) use workers::watch_current as watch_current_runtime;
pub use workers::{CurrentRuntimeError, NoWatchdog};
