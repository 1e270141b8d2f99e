//! Catch blocking in tests, before production: [`forbid_blocking`] fails the test whose runtime
//! a poll blocked, with a message that names the task, how long it held its thread, why, the
//! function that blocked and the app's function that called it.
//!
//! ```
//! # #[cfg(target_os = "linux")]
//! # fn main() {
//! use std::time::Duration;
//!
//! #[tokio::test]
//! # async fn fake() {}
//! async fn refresh_does_not_block() {
//!     let _guard = hogwatch::testing::forbid_blocking();
//!     // The code under test: spawned tasks, axum handlers driven with `oneshot`...
//!     tokio::spawn(async { tokio::time::sleep(Duration::from_millis(20)).await })
//!         .await
//!         .unwrap();
//! } // The guard drops here: the test passes, nothing blocked.
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
//! #     .block_on(refresh_does_not_block());
//! # }
//! # #[cfg(not(target_os = "linux"))]
//! # fn main() {}
//! ```
//!
//! What it watches: every thread of the runtime it is called in, found with
//! [`Detector::watch_current_runtime`]: the test body (the future given to `block_on`), the tasks
//! it spawned, wrapped or not, and what they drive (axum handlers through `oneshot`, or a real
//! `axum::serve` on loopback). A finding belongs to the runtime it happened on: tests that run in
//! parallel in one process (`cargo test`) each see their own, and `cargo nextest` runs one test
//! per process anyway.
//!
//! What counts: a poll that holds its thread longer than the threshold (5 ms unless
//! [`BlockingGuard::threshold`] says otherwise), on the CPU or blocked in a system call
//! (`std::thread::sleep`, a blocking read, a contended `std::sync::Mutex`), seen by the watchdog
//! while it blocks, in every build and without `tokio_unstable`. Never counted: `spawn_blocking`
//! closures (the blocking pool is not watched), polls inside `block_in_place`, and what
//! [`BlockingGuard::allow`] allows. Not seen: a block shorter than the threshold (this version
//! has no per-poll check of system calls), and a block that begins and ends within about a
//! threshold and a half (the watchdog confirms a stall by seeing the same poll a whole threshold
//! apart).
//!
//! Linux only, like the watchdog's stacks: elsewhere the guard checks nothing. It tells a task's
//! poll from tokio's scheduler by the functions' names, so a build without a symbol table
//! (`strip = true`, never the default for tests) finds nothing. In a release build a task's
//! `async fn` may be inlined into tokio's harness: the label then names the function it called.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::{Detector, Entry, StallCause};

/// The default threshold: a poll that holds its thread longer is a finding.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_millis(5);

/// Fails the calling test, when the returned guard drops, if any poll of the tokio runtime it is
/// called in blocked its thread (see the [module docs](self)). Call it at the top of an async
/// test (`#[tokio::test]`, either flavor).
///
/// # Panics
///
/// Outside a tokio runtime (it must see the runtime it guards); and, when the guard drops at the
/// end of the test, with every finding, worst first.
pub fn forbid_blocking() -> BlockingGuard {
    BlockingGuard::start(DEFAULT_THRESHOLD, Vec::new())
}

/// A predicate over a finding: `true` allows it.
type Allow = Arc<dyn Fn(&Finding) -> bool + Send + Sync>;

/// Watches the runtime it was made in; panics when dropped if a poll blocked (see
/// [`forbid_blocking`]).
#[must_use = "the guard checks the runtime when it drops: keep it until the end of the test"]
pub struct BlockingGuard {
    detector: Detector,
    threshold: Duration,
    allow: Vec<Allow>,
    /// Checks when dropped (not once replaced by `threshold` or ended by `finish`).
    armed: bool,
}

impl std::fmt::Debug for BlockingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingGuard")
            .field("threshold", &self.threshold)
            .field("allowed", &self.allow.len())
            .finish_non_exhaustive()
    }
}

impl BlockingGuard {
    fn start(threshold: Duration, allow: Vec<Allow>) -> Self {
        let detector = Detector::builder()
            .threshold(threshold)
            .watchdog(threshold)
            // The findings are the report: one warning per label is enough.
            .warn_interval(Duration::from_secs(3600))
            .build()
            .unwrap_or_else(|error| panic!("hogwatch::testing: {error}"));
        if let Err(error) = detector.watch_current_runtime_and_body() {
            panic!("hogwatch::testing::forbid_blocking: {error}");
        }
        Self {
            detector,
            threshold,
            allow,
            armed: true,
        }
    }

    /// A poll that holds its thread longer than `threshold` is a finding (default
    /// [`DEFAULT_THRESHOLD`]; at least a millisecond). Call it right away: it starts watching
    /// afresh.
    ///
    /// # Panics
    ///
    /// If `threshold` is below a millisecond or above an hour.
    pub fn threshold(mut self, threshold: Duration) -> Self {
        // The old guard checks nothing.
        self.armed = false;
        let allow = std::mem::take(&mut self.allow);
        drop(self);
        Self::start(threshold, allow)
    }

    /// Allows the findings `predicate` accepts, e.g. a function of a crate you do not own:
    /// `.allow(|finding| finding.mentions("legacy_client::"))`.
    pub fn allow(mut self, predicate: impl Fn(&Finding) -> bool + Send + Sync + 'static) -> Self {
        self.allow.push(Arc::new(predicate));
        self
    }

    /// What blocked so far and is not allowed, worst first.
    pub fn findings(&self) -> Vec<Finding> {
        let report = self.detector.report();
        let mut findings: Vec<Finding> = report
            .entries
            .iter()
            .filter(|entry| entry.stalls > 0)
            .map(Finding::of)
            .filter(|finding| !self.allow.iter().any(|allow| allow(finding)))
            .collect();
        findings.sort_by(|a, b| b.held.cmp(&a.held).then_with(|| a.label.cmp(&b.label)));
        findings
    }

    /// Ends the watch: `Err` with the message the drop would panic with, if anything blocked.
    pub fn finish(mut self) -> Result<(), String> {
        self.armed = false;
        let findings = self.findings();
        match findings.is_empty() {
            true => Ok(()),
            false => Err(message(&findings, self.threshold)),
        }
    }
}

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        // A test already failing says why; a second panic would abort the process.
        if !self.armed || std::thread::panicking() {
            return;
        }
        let findings = self.findings();
        if !findings.is_empty() {
            panic!("{}", message(&findings, self.threshold));
        }
    }
}

/// One label whose polls blocked the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// The task's function (`task my_app::refresh`), the test body (`block_on my_test`), or a
    /// wrapped label (a route).
    pub label: String,
    /// How many times it blocked.
    pub stalls: u64,
    /// The longest it held its thread, as far as the watchdog saw (to its last sample).
    pub held: Duration,
    /// Why, in most samples.
    pub cause: Option<StallCause>,
    /// The system call it was blocked in, if any (`clock_nanosleep`, `recvfrom`, `futex`...).
    pub syscall: Option<String>,
    /// The function that blocked: the first frame outside the runtime.
    pub culprit: Option<String>,
    /// The app's function that called it, when the culprit is another crate's.
    pub called_from: Option<String>,
    /// The most frequent stack, innermost frame first.
    pub stack: Vec<String>,
}

impl Finding {
    fn of(entry: &Entry) -> Self {
        let cause = entry.causes.first();
        let culprit = entry.top_culprits.first();
        Self {
            label: entry.label.clone(),
            stalls: entry.stalls,
            held: Duration::from_micros(entry.longest_stall_us.max(entry.max_poll_us)),
            cause: cause.map(|cause| cause.cause),
            syscall: cause.and_then(|cause| cause.syscall.clone()),
            culprit: culprit.map(|culprit| culprit.culprit.clone()),
            called_from: culprit.and_then(|culprit| culprit.called_from.clone()),
            stack: entry
                .top_stacks
                .first()
                .map(|stack| stack.stack.rsplit(';').map(str::to_string).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether `text` is part of its label, culprit, caller or any frame of its stack.
    pub fn mentions(&self, text: &str) -> bool {
        self.label.contains(text)
            || self
                .culprit
                .iter()
                .chain(&self.called_from)
                .chain(&self.stack)
                .any(|name| name.contains(text))
    }
}

/// How many frames of a finding's stack the message shows.
const STACK_LINES: usize = 12;

/// The panic message: one block per finding, worst first, like a compiler's error.
fn message(findings: &[Finding], threshold: Duration) -> String {
    let mut text = format!(
        "error: {} blocked this test's tokio runtime (hogwatch::testing::forbid_blocking, \
         threshold {threshold:?})\n",
        match findings.len() {
            1 => "a poll".to_string(),
            n => format!("polls of {n} labels"),
        }
    );
    // Writing into a String cannot fail.
    for finding in findings {
        let _ = write!(
            text,
            "\n  --> {} held its thread for {:.1} ms",
            finding.label,
            finding.held.as_secs_f64() * 1e3
        );
        if finding.stalls > 1 {
            let _ = write!(text, " ({} times)", finding.stalls);
        }
        text.push('\n');
        if let Some(cause) = finding.cause {
            let _ = write!(text, "      cause: {cause}");
            if let Some(syscall) = &finding.syscall {
                let _ = write!(text, " ({syscall})");
            }
            text.push('\n');
        }
        if let Some(culprit) = &finding.culprit {
            let _ = writeln!(text, "      in: {culprit}");
        }
        if let Some(caller) = &finding.called_from {
            let _ = writeln!(text, "      called from: {caller}");
        }
        if let Some(hint) = finding.cause.and_then(StallCause::hint) {
            let _ = writeln!(text, "      = help: {hint}");
        }
        // The frames that have a name (the C library's often have none).
        let stack: Vec<&String> = finding
            .stack
            .iter()
            .filter(|frame| !frame.starts_with('['))
            .collect();
        if !stack.is_empty() {
            text.push_str("      stack (innermost first):\n");
            for frame in stack.iter().take(STACK_LINES) {
                let _ = writeln!(text, "        {frame}");
            }
            if stack.len() > STACK_LINES {
                let _ = writeln!(text, "        … {} more", stack.len() - STACK_LINES);
            }
        }
    }
    text.push_str(
        "\n  = note: spawn_blocking and block_in_place never count; allow a finding with \
         forbid_blocking().allow(|finding| finding.mentions(\"...\"))\n",
    );
    text
}
