//! `hogwatch console` against a real console-subscriber: an app in the test (its own runtime,
//! console-subscriber's server on a free port) spawns a task that blocks 60 ms per poll and tasks
//! that never block; the library entry point and the built binary must rank the blocking task's
//! spawn location first. Then the error cases: nothing at the address, a server that is not
//! console-subscriber, the app going away mid-run, unknown flags. console-subscriber needs
//! `--cfg tokio_unstable`; without it this file is empty.
#![cfg(tokio_unstable)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::Location;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hogwatch::console::{self, ConsoleError, Options, Progress};
use hogwatch::{LabelKind, Report};
use tracing_subscriber::prelude::*;

/// How long the blocking task blocks its worker, per poll.
const BLOCK: Duration = Duration::from_millis(60);
/// Polls of the blocking task that block (it is polled once more to finish).
const BLOCKING_POLLS: u32 = 4;
/// The threshold the tool runs with: a third of the block, far above a poll that does not block.
const THRESHOLD: &str = "20ms";
const THRESHOLD_US: u64 = 20_000;
/// Tasks that never block, and how many times each yields to a timer.
const QUIET_TASKS: usize = 3;
const QUIET_POLLS: u32 = 20;

/// The app: its own runtime, with console-subscriber's layer as the tracing dispatcher of every
/// thread of it (not the global one, so each test has its own app and server). The console
/// server runs on a runtime of its own that is not traced, as `ConsoleLayer::spawn` runs it.
struct App {
    runtime: Option<tokio::runtime::Runtime>,
    console: Option<tokio::runtime::Runtime>,
    address: SocketAddr,
    blocking: &'static Location<'static>,
    quiet: &'static Location<'static>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns a named task and returns where it was spawned: the location console reports.
#[track_caller]
fn spawn_named(
    name: &str,
    future: impl std::future::Future<Output = ()> + Send + 'static,
) -> &'static Location<'static> {
    let location = Location::caller();
    tokio::task::Builder::new()
        .name(name)
        .spawn(future)
        .expect("the runtime takes tasks");
    location
}

/// Runs `work` on the blocking pool, spawned where this is called: the location console reports
/// for the blocking task (`spawn_blocking` takes its caller's location through this function).
#[track_caller]
fn offload(work: impl FnOnce() + Send + 'static) -> &'static Location<'static> {
    let location = Location::caller();
    drop(tokio::task::spawn_blocking(work));
    location
}

impl App {
    /// The app with a task that blocks 60 ms per poll and quiet tasks.
    fn start() -> Self {
        Self::start_with(|| {
            let blocking = spawn_named("blocker", async {
                for _ in 0..BLOCKING_POLLS {
                    std::thread::sleep(BLOCK);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let mut quiet = None;
            for _ in 0..QUIET_TASKS {
                quiet = Some(spawn_named("quiet", async {
                    for _ in 0..QUIET_POLLS {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }));
            }
            (blocking, quiet.unwrap())
        })
    }

    /// The app, with the tasks `spawn` spawns on its runtime (it returns the locations of the
    /// blocking one and of another one).
    fn start_with(
        spawn: impl FnOnce() -> (&'static Location<'static>, &'static Location<'static>),
    ) -> Self {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (layer, server) = console_subscriber::ConsoleLayer::builder()
            .server_addr(address)
            .publish_interval(Duration::from_millis(100))
            .build();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        let thread_dispatch = dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                // The thread's dispatcher for as long as it lives.
                std::mem::forget(tracing::dispatcher::set_default(&thread_dispatch));
            })
            .build()
            .unwrap();
        // The server's runtime records nothing (a registry without layers). It must still be a
        // registered dispatcher: with a single one, tracing takes a callsite's interest from the
        // default of whichever thread reaches it first, and a thread without one would turn
        // tokio's task spans off for the app too.
        let untraced = tracing::Dispatch::new(tracing_subscriber::registry());
        let console_dispatch = untraced.clone();
        let console = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(move || {
                std::mem::forget(tracing::dispatcher::set_default(&console_dispatch));
            })
            .build()
            .unwrap();
        tracing::dispatcher::with_default(&untraced, || {
            console.spawn(async move {
                let _ = server.serve().await;
            })
        });
        let (blocking, quiet) = tracing::dispatcher::with_default(&dispatch, || {
            let _runtime = runtime.enter();
            spawn()
        });
        // The server binds on its own task: wait until it accepts.
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(address).is_err() {
            assert!(
                Instant::now() < deadline,
                "console-subscriber never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            runtime: Some(runtime),
            console: Some(console),
            address,
            blocking,
            quiet,
        }
    }

    fn label(location: &Location<'_>) -> String {
        format!("task {}:{}", location.file(), location.line())
    }

    /// The app goes away: its runtimes, the console server and its connections with them.
    fn stop(&mut self) {
        for runtime in [self.console.take(), self.runtime.take()]
            .into_iter()
            .flatten()
        {
            runtime.shutdown_background();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The blocking task's location first, its four blocks counted; the quiet tasks' location
/// present with every poll and none slow.
fn assert_ranking(app: &App, report: &Report) {
    let text = report.to_text();
    let first = report
        .entries
        .first()
        .unwrap_or_else(|| panic!("empty:\n{text}"));
    assert_eq!(first.label, App::label(app.blocking), "\n{text}");
    assert_eq!(first.kind, LabelKind::Task);
    assert!(first.slow_polls >= u64::from(BLOCKING_POLLS), "\n{text}");
    assert!(first.max_poll_us >= 60_000, "\n{text}");
    assert!(first.busy_us >= 4 * 60_000, "\n{text}");
    assert_eq!(first.completed, 1, "\n{text}");
    let quiet = report
        .entry(&App::label(app.quiet))
        .unwrap_or_else(|| panic!("no quiet tasks in\n{text}"));
    assert!(
        quiet.polls > QUIET_TASKS as u64 * u64::from(QUIET_POLLS),
        "\n{text}"
    );
    assert_eq!(quiet.slow_polls, 0, "\n{text}");
    assert!(quiet.max_poll_us < THRESHOLD_US, "\n{text}");
    assert_eq!(report.threshold_us, THRESHOLD_US);
}

fn options(address: String) -> Options {
    let mut options = Options::default();
    options.address = address;
    options.threshold = Duration::from_micros(THRESHOLD_US);
    options.interval = Duration::from_millis(500);
    options.connect_timeout = Duration::from_secs(2);
    options
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn library_ranks_the_blocking_spawn_location_first() {
    let app = App::start();
    let mut options = options(app.address.to_string());
    options.duration = Some(Duration::from_secs(3));
    let blocking = App::label(app.blocking);
    let quiet = App::label(app.quiet);
    let (mut ticks, mut warned) = (0, false);
    let report = block_on(console::run(
        &options,
        std::future::pending(),
        |progress| match progress {
            Progress::Tick { .. } => ticks += 1,
            Progress::SlowPolls { label, name, .. } => {
                assert_ne!(label, quiet, "a quiet task was called slow");
                if label == blocking {
                    assert_eq!(name, Some("blocker"));
                    warned = true;
                }
            }
            _ => {}
        },
    ))
    .unwrap();
    assert_ranking(&app, &report);
    assert!(ticks >= 4, "a tick every 500 ms for 3 s, saw {ticks}");
    assert!(warned, "no warning for the blocking task");
}

/// A task stuck in its first poll (a 20 s `std::thread::sleep`) is a stall 2 s later, ranked
/// first though console has counted none of its polls; `spawn_blocking` closures (one of 300 ms,
/// done, then one of 5 s, in progress) are never ranked.
#[test]
fn a_poll_in_progress_is_a_stall_and_the_blocking_pool_is_never_ranked() {
    let app = App::start_with(|| {
        let stuck = spawn_named("stuck", async {
            std::thread::sleep(Duration::from_secs(20));
        });
        // One location: 300 ms, done before the second, of 5 s, starts.
        let mut offloaded = None;
        for run in [Duration::from_millis(300), Duration::from_secs(5)] {
            offloaded = Some(offload(move || std::thread::sleep(run)));
            std::thread::sleep(Duration::from_millis(400));
        }
        (stuck, offloaded.unwrap())
    });
    let mut options = options(app.address.to_string());
    options.duration = Some(Duration::from_secs(2));
    let report = block_on(console::run(&options, std::future::pending(), |_| {}));
    let report = report.unwrap();
    let text = report.to_text();
    let first = report
        .entries
        .first()
        .unwrap_or_else(|| panic!("empty:\n{text}"));
    assert_eq!(first.label, App::label(app.blocking), "\n{text}");
    assert_eq!(first.stalls, 1, "\n{text}");
    assert!(first.longest_stall_us >= 1_500_000, "\n{text}");
    assert!(
        report.entry(&App::label(app.quiet)).is_none(),
        "a blocking-pool task is ranked:\n{text}"
    );
}

/// Runs the binary; its output once it exits, within `limit`.
fn hogwatch(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hogwatch"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs")
}

fn wait(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "hogwatch still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn code(status: ExitStatus) -> Option<i32> {
    status.code()
}

/// The report in hogwatch's JSON schema, back into the fields the assertions read.
fn report_from_json(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}):\n{}", String::from_utf8_lossy(stdout)))
}

fn assert_json_ranking(app: &App, json: &serde_json::Value) {
    let entries = json["entries"].as_array().expect("entries");
    let first = entries
        .first()
        .unwrap_or_else(|| panic!("no entries: {json:#}"));
    assert_eq!(first["label"], App::label(app.blocking), "{json:#}");
    assert_eq!(first["kind"], "task");
    assert!(first["slow_polls"].as_u64().unwrap() >= u64::from(BLOCKING_POLLS));
    assert!(first["max_poll_us"].as_u64().unwrap() >= 60_000, "{json:#}");
    let quiet = entries
        .iter()
        .find(|entry| entry["label"] == App::label(app.quiet))
        .unwrap_or_else(|| panic!("no quiet tasks in {json:#}"));
    assert_eq!(quiet["slow_polls"], 0, "{json:#}");
    assert_eq!(json["threshold_us"], THRESHOLD_US);
}

#[test]
fn binary_prints_the_final_report_as_json() {
    let app = App::start();
    let address = format!("http://{}", app.address);
    let child = hogwatch(&[
        "console",
        &address,
        "--threshold",
        THRESHOLD,
        "--duration",
        "3s",
        "--json",
    ]);
    let output = wait(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(code(output.status), Some(0), "{stderr}");
    assert_json_ranking(&app, &report_from_json(&output.stdout));
    assert!(stderr.contains("connected to"), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: {} (blocker)", App::label(app.blocking))),
        "{stderr}"
    );
}

/// Lines of a child's stream, as they come.
fn lines(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for a line containing `needle`; returns every line read until then.
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }
    panic!("no line with {needle:?} in:\n{}", seen.join("\n"));
}

#[test]
fn binary_shows_a_live_table_and_the_final_report_on_ctrl_c() {
    let app = App::start();
    let mut child = hogwatch(&[
        "console",
        &app.address.to_string(),
        "--threshold",
        THRESHOLD,
    ]);
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    let blocking = App::label(app.blocking);
    // The live table (stdout) names the blocking task; the warning line (stderr) too.
    let table = wait_for_line(&stdout, &blocking);
    assert!(
        table
            .iter()
            .any(|line| line.starts_with("label") && line.contains("slow_polls")),
        "{table:#?}"
    );
    wait_for_line(&stderr, &format!("warning: {blocking} (blocker)"));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait(child, Duration::from_secs(15)).status;
    assert_eq!(code(status), Some(0));
    // After Ctrl-C, the final report: a whole table, the blocking location first.
    let rest: Vec<String> = stdout.iter().collect();
    let header = rest
        .iter()
        .rposition(|line| line.starts_with("hogwatch: threshold 20000 us"))
        .unwrap_or_else(|| panic!("no final report in {rest:#?}"));
    assert!(rest[header + 2].starts_with(&blocking), "{rest:#?}");
}

#[test]
fn the_app_going_away_prints_the_report_so_far_and_exits_1() {
    let mut app = App::start();
    let mut child = hogwatch(&[
        "console",
        &app.address.to_string(),
        "--threshold",
        THRESHOLD,
        "--json",
    ]);
    let stdout = child.stdout.take().unwrap();
    let stderr = lines(child.stderr.take().unwrap());
    wait_for_line(&stderr, &format!("warning: {}", App::label(app.blocking)));
    // Every task's histogram is in (the report is not made of estimates), then the app goes.
    wait_for_line(&stderr, " 0 awaiting their histogram");
    app.stop();
    let started = Instant::now();
    let mut child_stdout = Vec::new();
    BufReader::new(stdout)
        .read_to_end(&mut child_stdout)
        .unwrap();
    let status = wait(child, Duration::from_secs(15)).status;
    let stderr: Vec<String> = stderr.iter().collect();
    assert_eq!(code(status), Some(1), "{stderr:#?}");
    assert!(
        stderr.iter().any(|line| line.contains("went away")),
        "{stderr:#?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_json_ranking(&app, &report_from_json(&child_stdout));
}

#[test]
fn library_reports_the_app_going_away_with_the_report_so_far() {
    let mut app = App::start();
    let options = options(app.address.to_string());
    let blocking = App::label(app.blocking);
    let result = block_on(async {
        let (seen, mut warned) = tokio::sync::mpsc::unbounded_channel::<()>();
        let stop_when_seen = async move {
            warned.recv().await;
            // Stop the app from another thread: its runtime cannot be dropped in this one.
            let _ = tokio::task::spawn_blocking(move || app.stop()).await;
            std::future::pending::<()>().await;
        };
        let run = console::run(&options, std::future::pending(), |progress| {
            if let Progress::SlowPolls { label, .. } = progress {
                if label == blocking {
                    let _ = seen.send(());
                }
            }
        });
        let run = async {
            tokio::select! {
                result = run => result,
                () = stop_when_seen => unreachable!(),
            }
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("no slow poll seen in 30 s, or the app's going away never noticed")
    });
    match result {
        Err(ConsoleError::Disconnected { report, .. }) => {
            assert_eq!(report.entries[0].label, blocking, "{}", report.to_text());
            assert!(report.entries[0].slow_polls >= 1, "{}", report.to_text());
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

/// A one-line error on stderr, exit status 2, within the connect timeout (2 s) and some margin
/// for the process to start.
fn assert_fails_fast(args: &[&str], expected: &str) {
    let started = Instant::now();
    let output = wait(hogwatch(args), Duration::from_secs(20));
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(code(output.status), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn nothing_listening_is_a_one_line_error_and_exit_2() {
    // A port that was free a moment ago: connections are refused.
    let address = format!("127.0.0.1:{}", free_port());
    assert_fails_fast(
        &["console", &address, "--connect-timeout", "2s"],
        "cannot connect to",
    );
    let error = block_on(console::run(
        &options(address),
        std::future::pending(),
        |_| {},
    ))
    .unwrap_err();
    assert!(matches!(error, ConsoleError::Unreachable { .. }), "{error}");
}

/// A server that answers every connection with an HTTP/1 response and closes it.
fn http1_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    address
}

/// A server that accepts connections and never says anything.
fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    address
}

#[test]
fn a_server_that_is_not_console_is_a_one_line_error_and_exit_2() {
    for address in [http1_server(), silent_server()] {
        let address = address.to_string();
        assert_fails_fast(
            &["console", &address, "--connect-timeout", "2s"],
            "is not a console-subscriber server",
        );
        let started = Instant::now();
        let error = block_on(console::run(
            &options(address),
            std::future::pending(),
            |_| {},
        ))
        .unwrap_err();
        assert!(matches!(error, ConsoleError::NotConsole { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[test]
fn unknown_flags_print_usage_and_exit_2() {
    let output = wait(
        hogwatch(&["console", "--frobnicate"]),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(code(output.status), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown option \"--frobnicate\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("usage: hogwatch console [ADDRESS]"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    let output = wait(
        hogwatch(&["console", "127.0.0.1:1", "--threshold", "10"]),
        Duration::from_secs(20),
    );
    assert_eq!(code(output.status), Some(2));
    let output = wait(hogwatch(&["--help"]), Duration::from_secs(20));
    assert_eq!(code(output.status), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("--threshold DURATION"));
}

#[test]
fn an_address_that_is_not_a_uri_is_a_typed_error() {
    let error = block_on(console::run(
        &options("http://".to_string()),
        std::future::pending(),
        |_| {},
    ))
    .unwrap_err();
    assert!(
        matches!(error, ConsoleError::InvalidAddress { .. }),
        "{error}"
    );
}
