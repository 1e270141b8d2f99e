//! The naming thread (`hogwatch-symbols`): names the wrapped polls' captured stacks off the
//! watchdog thread, records what the names add to the stall record, and sends the stall's
//! warning.

use std::sync::Arc;

use crate::event::HogEvent;

use super::table::{warn_stall, Watchdog};
use super::{signal, symbols};

/// A captured stack to name and record under its label, and maybe to warn about.
pub(super) struct Job {
    pub(super) raw: signal::RawStack,
    pub(super) label: Arc<str>,
    /// The stall's event, without stack yet, and `Some(suppressed)` if its warning is due.
    pub(super) event: Option<(HogEvent, Option<u64>)>,
    /// Where the named stack goes if the watchdog thread still waits for it.
    pub(super) reply: Option<std::sync::mpsc::Sender<(Vec<String>, Option<String>)>>,
}

/// The thread that names captured stacks (`hogwatch-symbols`): reading debug information takes
/// about a second the first time in a debug build, and naming new addresses can take tens of
/// milliseconds after that, which the watchdog thread must not spend away from its checks. It
/// loads the program's debug information as soon as it starts (before any stall, usually), and
/// ends when the watchdog thread does; nothing waits for it.
pub(super) struct Namer {
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
}

/// Stacks waiting to be named, at most; later ones are dropped (their stalls are still counted
/// and reported).
const MAX_WAITING: usize = 64;

impl Namer {
    pub(super) fn spawn(watchdog: Arc<Watchdog>) -> Self {
        let (jobs, receive) = std::sync::mpsc::sync_channel::<Job>(MAX_WAITING);
        let spawned = std::thread::Builder::new()
            .name("hogwatch-symbols".to_string())
            .spawn(move || {
                // The debug information loads beside: stacks named meanwhile take their names
                // from the symbol table.
                symbols::warm_up_in_background();
                let mut symbolizer = symbols::Symbolizer::default();
                while let Ok(job) = receive.recv() {
                    let Job {
                        raw,
                        label,
                        event,
                        reply,
                    } = job;
                    let mut frames = symbolizer.frames(&raw.ips, raw.pc, raw.uncertain_from);
                    frames.truncate(signal::MAX_FRAMES);
                    let named = symbols::named_stack(&frames, &watchdog.prefixes);
                    let culprit = named.culprit.clone();
                    watchdog
                        .lock()
                        .entry(label)
                        .or_default()
                        .record_names(&named);
                    let stack: Vec<String> = frames.into_iter().map(|frame| frame.name).collect();
                    if let Some(reply) = reply {
                        let _ = reply.send((stack.clone(), culprit.clone()));
                    }
                    if let Some((mut event, Some(suppressed))) = event {
                        event.stack = stack;
                        event.culprit = culprit;
                        warn_stall(&watchdog, &event, suppressed, &event.stack.join("\n  "));
                    }
                }
            });
        Self {
            // Without the thread, stacks are captured but never named.
            jobs: spawned.ok().map(|_| jobs),
        }
    }

    /// Hands `job` to the naming thread; `false` if that thread is busy or gone.
    pub(super) fn send(&self, job: Job) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.try_send(job).is_ok())
    }
}
