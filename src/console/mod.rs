//! `hogwatch console`: ranks the blocking tasks of an app that runs console-subscriber, from
//! outside the app (feature `cli`).
//!
//! tokio-console shows every task's polls, busy time and, for the task you select, its poll-time
//! histogram; it does not say which tasks block their worker. [`run`] connects to the same gRPC
//! server (console-subscriber's, `http://127.0.0.1:6669` by default), follows its task updates,
//! fetches the poll-time histogram of each task whose polls changed, and makes hogwatch's own
//! [`Report`] of it: one `task FILE:LINE` entry per spawn location (kind
//! [`LabelKind::Task`](crate::LabelKind::Task)), worst first, with polls over the threshold
//! counted from console's histograms. The report renders like any other: `to_text()`, JSON,
//! the HTML page.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hogwatch::console::ConsoleError> {
//! use std::time::Duration;
//!
//! let mut options = hogwatch::console::Options::default(); // http://127.0.0.1:6669, 10 ms
//! options.duration = Some(Duration::from_secs(10));
//! let report = hogwatch::console::run(&options, std::future::pending(), |_| {}).await?;
//! for hog in report.hogs() {
//!     println!("{}: {} polls over 10 ms, longest {} us", hog.label, hog.slow_polls, hog.max_poll_us);
//! }
//! # Ok(()) }
//! ```
//!
//! What it can and cannot see:
//! - The app needs nothing of hogwatch, only console-subscriber (and so `--cfg tokio_unstable`).
//! - Figures are console's: cumulative since each task was spawned, so a task already running
//!   when the tool connects brings its history, and tasks that ended within console-subscriber's
//!   retention (an hour by default) are in the first report.
//! - Histograms are fetched per task (console sends them only on request), busiest first, at
//!   most [`MAX_IN_FLIGHT`] at a time: a new task's at once, then once per interval while its
//!   poll count changes, and an ended task's last one. Until a task's histogram
//!   is in, its polls count at their mean duration (busy time / polls), and only the slow poll
//!   that is certain is counted: one, when the mean is over the threshold (the longest poll is at
//!   least the mean).
//! - Console's histograms keep 2 significant figures and clamp polls over their maximum (1 s by
//!   default) to it; the longest such outlier stands for all of them.
//! - Cancellations, panics and stalls are unknown to console: those columns stay 0.

mod state;

use std::future::Future;
use std::time::Duration;

use console_api::instrument::instrument_client::InstrumentClient;
use console_api::instrument::{InstrumentRequest, TaskDetailsRequest};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::report::Report;

/// console-subscriber's default address.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:6669";

/// Details requests in flight at once. An HTTP/2 server takes a bounded number of concurrent
/// streams (hyper's default is 200), and the updates stream must always fit.
pub const MAX_IN_FLIGHT: usize = 64;

/// The largest update accepted: console-subscriber sends every task it retains in its first
/// update, far over tonic's 4 MiB default in a busy app.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// What [`run`] connects to and how long it follows.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// console-subscriber's gRPC address: `http://HOST:PORT` (a bare `HOST:PORT` gets `http://`).
    pub address: String,
    /// A poll longer than this is a slow poll (10 ms by default).
    pub threshold: Duration,
    /// Stop after this long; `None` follows until `stop` resolves or the app goes away.
    pub duration: Option<Duration>,
    /// How long connecting and the server's first update may take (3 s by default).
    pub connect_timeout: Duration,
    /// How often [`Progress::Tick`] brings a fresh report and histograms are fetched (1 s).
    pub interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.to_string(),
            threshold: Duration::from_millis(10),
            duration: None,
            connect_timeout: Duration::from_secs(3),
            interval: Duration::from_secs(1),
        }
    }
}

/// Why [`run`] could not produce a report, or stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The address is not a URI tonic can connect to.
    #[error("{address} is not a gRPC address (http://HOST:PORT): {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing accepted a connection at the address within the connect timeout.
    #[error("cannot connect to {address}: {reason}")]
    Unreachable {
        /// The address connected to.
        address: String,
        /// The transport's error, with its causes.
        reason: String,
    },
    /// Something accepted the connection but did not answer as console-subscriber does within
    /// the connect timeout.
    #[error("{address} is not a console-subscriber server: {reason}")]
    NotConsole {
        /// The address connected to.
        address: String,
        /// What it answered, or that it did not.
        reason: String,
    },
    /// The app went away (its update stream ended or failed) after the tool had connected; the
    /// report holds everything seen until then.
    #[error("the app at {address} went away: {reason}")]
    Disconnected {
        /// The address connected to.
        address: String,
        /// How the stream ended.
        reason: String,
        /// The report of everything seen before.
        report: Box<Report>,
    },
}

/// What [`run`] tells while it follows the app.
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// Connected: the server answered with its first update.
    Connected {
        /// The address connected to.
        address: &'a str,
        /// Tasks in the first update (live ones and those console still retains).
        tasks: usize,
    },
    /// Every [`Options::interval`]: the report so far.
    Tick {
        /// Every spawn location seen, worst first.
        report: &'a Report,
        /// Tasks followed (alive, or ended with their final histogram not yet in).
        tasks: usize,
        /// Of those, tasks counted at their mean poll for want of a histogram.
        estimated: usize,
    },
    /// A spawn location had polls over the threshold since the last tick (at most one per
    /// location per tick).
    SlowPolls {
        /// `task FILE:LINE`.
        label: &'a str,
        /// The name of a task spawned there (`tokio::task::Builder::name`), if any.
        name: Option<&'a str>,
        /// Polls over the threshold since the last tick.
        new_slow_polls: u64,
        /// The location's longest poll so far, in microseconds.
        max_poll_us: u64,
    },
}

/// The gRPC address as a URI: `HOST:PORT` gets `http://`.
fn endpoint(address: &str, options: &Options) -> Result<Endpoint, ConsoleError> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|error| ConsoleError::InvalidAddress {
        address: address.to_string(),
        reason: chain(&error),
    })?;
    if endpoint.uri().host().is_none() {
        return Err(ConsoleError::InvalidAddress {
            address: address.to_string(),
            reason: "no host".to_string(),
        });
    }
    Ok(endpoint
        .connect_timeout(options.connect_timeout)
        // A host that vanishes sends no FIN: keep-alive pings notice it.
        .http2_keep_alive_interval(options.connect_timeout.max(Duration::from_secs(1)))
        .keep_alive_timeout(options.connect_timeout.max(Duration::from_secs(1))))
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A gRPC status on one line.
fn status_text(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

/// Connects and reads the server's first update, within the connect timeout.
async fn connect(
    address: &str,
    options: &Options,
) -> Result<
    (
        InstrumentClient<Channel>,
        tonic::Streaming<console_api::instrument::Update>,
        console_api::instrument::Update,
    ),
    ConsoleError,
> {
    let endpoint = endpoint(address, options)?;
    let timeout = options.connect_timeout;
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(error)) => {
            return Err(ConsoleError::Unreachable {
                address: address.to_string(),
                reason: chain(&error),
            })
        }
        Err(_) => {
            return Err(ConsoleError::Unreachable {
                address: address.to_string(),
                reason: format!("no connection within {timeout:?}"),
            })
        }
    };
    let not_console = |reason: String| ConsoleError::NotConsole {
        address: address.to_string(),
        reason,
    };
    let mut client = InstrumentClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let first = tokio::time::timeout(timeout, async {
        let mut updates = client
            .watch_updates(InstrumentRequest {})
            .await
            .map_err(|status| not_console(status_text(&status)))?
            .into_inner();
        match updates.message().await {
            Ok(Some(first)) => Ok((updates, first)),
            Ok(None) => Err(not_console("the update stream ended at once".to_string())),
            Err(status) => Err(not_console(status_text(&status))),
        }
    })
    .await
    .map_err(|_| not_console(format!("no update within {timeout:?}")))?;
    let (updates, first) = first?;
    Ok((client, updates, first))
}

/// One details request: the task's current poll-time histogram, or `None`.
async fn fetch_details(
    mut client: InstrumentClient<Channel>,
    id: u64,
    timeout: Duration,
) -> (u64, Option<console_api::tasks::TaskDetails>) {
    let details = tokio::time::timeout(timeout, async {
        let mut stream = client
            .watch_task_details(TaskDetailsRequest {
                id: Some(console_api::Id { id }),
            })
            .await
            .ok()?
            .into_inner();
        // The first message is the task's state now; the stream is dropped after it.
        stream.message().await.ok()?
    })
    .await
    .ok()
    .flatten();
    (id, details)
}

/// Follows the console-subscriber server at `options.address` until `stop` resolves,
/// `options.duration` passes or the app goes away, and returns the report of every spawn
/// location seen, worst first. `progress` hears of the connection, each tick's report and slow
/// polls as they are seen.
///
/// The caller's runtime needs its time and IO drivers (`enable_all`).
///
/// # Errors
///
/// - [`ConsoleError::InvalidAddress`]: `options.address` is not `http://HOST:PORT`;
/// - [`ConsoleError::Unreachable`]: no connection within `options.connect_timeout`;
/// - [`ConsoleError::NotConsole`]: the server did not send console's first update within
///   `options.connect_timeout`;
/// - [`ConsoleError::Disconnected`]: the update stream ended after the first update; it holds
///   the report so far.
pub async fn run(
    options: &Options,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Report, ConsoleError> {
    let address = options.address.as_str();
    let (client, mut updates, first) = connect(address, options).await?;
    let threshold_ns = crate::recorder::saturating_u64(options.threshold.as_nanos());
    let mut state = state::State::new(threshold_ns);
    state.update(first);
    progress(Progress::Connected {
        address,
        tasks: state.counts().live,
    });

    let mut fetches = JoinSet::new();
    let fetch_timeout = options.connect_timeout;
    let fetch_more = |state: &mut state::State, fetches: &mut JoinSet<_>, refresh: bool| {
        for id in state.take_stale(MAX_IN_FLIGHT.saturating_sub(fetches.len()), refresh) {
            fetches.spawn(fetch_details(client.clone(), id, fetch_timeout));
        }
    };
    fetch_more(&mut state, &mut fetches, true);

    let interval = options.interval.max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = async {
        match options.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, deadline);
    let mut last_slow: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let ended = loop {
        tokio::select! {
            () = &mut stop => break None,
            () = &mut deadline => break None,
            message = updates.message() => match message {
                Ok(Some(update)) => {
                    state.update(update);
                    // A new task's histogram, or an ended one's last, is asked for at once;
                    // the others are refreshed once per tick.
                    fetch_more(&mut state, &mut fetches, false);
                }
                Ok(None) => break Some("its update stream ended".to_string()),
                Err(status) => break Some(status_text(&status)),
            },
            Some(joined) = fetches.join_next() => {
                if let Ok((id, details)) = joined {
                    state.details(id, details);
                }
                fetch_more(&mut state, &mut fetches, false);
            }
            _ = ticks.tick() => {
                fetch_more(&mut state, &mut fetches, true);
                let report = state.report();
                for entry in report.hogs() {
                    let seen = last_slow.entry(entry.label.clone()).or_insert(0);
                    if entry.slow_polls > *seen {
                        progress(Progress::SlowPolls {
                            label: &entry.label,
                            name: state.name(&entry.label),
                            new_slow_polls: entry.slow_polls - *seen,
                            max_poll_us: entry.max_poll_us,
                        });
                        *seen = entry.slow_polls;
                    }
                }
                let counts = state.counts();
                progress(Progress::Tick {
                    report: &report,
                    tasks: counts.live,
                    estimated: counts.estimated,
                });
            }
        }
    };

    if let Some(reason) = ended {
        // The app is gone: its histograms with it. What is in hand is the report.
        fetches.abort_all();
        return Err(ConsoleError::Disconnected {
            address: address.to_string(),
            reason,
            report: Box::new(state.report()),
        });
    }
    // The final report: every lagging histogram is fetched once more (each within the connect
    // timeout), so the last polls are not estimated; a task still being polled is not chased.
    let mut queue = state.take_stale(usize::MAX, true);
    loop {
        while fetches.len() < MAX_IN_FLIGHT {
            let Some(id) = queue.pop() else { break };
            fetches.spawn(fetch_details(client.clone(), id, fetch_timeout));
        }
        let Some(joined) = fetches.join_next().await else {
            break;
        };
        if let Ok((id, details)) = joined {
            state.details(id, details);
        }
    }
    Ok(state.report())
}
