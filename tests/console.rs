//! hogwatch beside tokio-console, checked with console's own gRPC client (`console-api`): the
//! example app runs with console-subscriber's layer; tokio-console's view of the blocking task
//! must show a poll over the threshold, and hogwatch's report must name the same task by its
//! spawn location. Needs `--cfg tokio_unstable` (tokio's task spans and hooks); without it this
//! file is empty.
#![cfg(tokio_unstable)]

#[allow(dead_code)]
#[path = "../examples/console.rs"]
mod example;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use console_api::field::Name;
use console_api::instrument::instrument_client::InstrumentClient;
use console_api::instrument::{InstrumentRequest, TaskDetailsRequest};
use console_api::tasks::task_details::PollTimesHistogram;
use hogwatch::{Detector, LabelKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::prelude::*;

/// What tokio-console knows of one task.
#[derive(Debug, Default)]
struct ConsoleTask {
    name: Option<String>,
    file: String,
    line: u32,
    polls: u64,
    busy: Duration,
    /// The largest value of console's poll-time histogram.
    longest_poll: Option<Duration>,
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads task updates until a task named `name` shows up with its stats.
async fn find_task(
    client: &mut InstrumentClient<tonic::transport::Channel>,
    name: &str,
) -> (u64, ConsoleTask) {
    let mut updates = client
        .watch_updates(InstrumentRequest {})
        .await
        .unwrap()
        .into_inner();
    // Field names arrive either inline or as an index into their span's registered metadata.
    let mut field_names: HashMap<u64, Vec<String>> = HashMap::new();
    let mut tasks: HashMap<u64, ConsoleTask> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Ok(Some(update)) = tokio::time::timeout(Duration::from_secs(5), updates.message())
            .await
            .unwrap_or(Ok(None))
        else {
            continue;
        };
        for new in update.new_metadata.into_iter().flat_map(|m| m.metadata) {
            if let (Some(id), Some(metadata)) = (new.id, new.metadata) {
                field_names.insert(id.id, metadata.field_names);
            }
        }
        let Some(task_update) = update.task_update else {
            continue;
        };
        for task in task_update.new_tasks {
            let Some(id) = task.id else { continue };
            let mut seen = ConsoleTask::default();
            if let Some(location) = task.location {
                seen.file = location.file.unwrap_or_default();
                seen.line = location.line.unwrap_or_default();
            }
            for field in task.fields {
                let field_name = match field.name {
                    Some(Name::StrName(name)) => Some(name),
                    Some(Name::NameIdx(index)) => field
                        .metadata_id
                        .and_then(|meta| field_names.get(&meta.id)?.get(index as usize).cloned()),
                    None => None,
                };
                if field_name.as_deref() == Some("task.name") {
                    seen.name = field.value.map(|value| match value {
                        console_api::field::Value::DebugVal(text)
                        | console_api::field::Value::StrVal(text) => text,
                        other => format!("{other:?}"),
                    });
                }
            }
            tasks.insert(id.id, seen);
        }
        for (id, stats) in task_update.stats_update {
            if let (Some(task), Some(poll_stats)) = (tasks.get_mut(&id), stats.poll_stats) {
                task.polls = poll_stats.polls;
                if let Some(busy) = poll_stats.busy_time {
                    task.busy = Duration::new(busy.seconds as u64, busy.nanos as u32);
                }
            }
        }
        if let Some((&id, _)) = tasks
            .iter()
            .find(|(_, task)| task.name.as_deref() == Some(name) && task.polls > 0)
        {
            return (id, tasks.remove(&id).unwrap());
        }
    }
    panic!("tokio-console never showed a polled task named {name}: {tasks:#?}");
}

/// The longest poll tokio-console recorded for task `id`, from its poll-time histogram.
async fn longest_poll(
    client: &mut InstrumentClient<tonic::transport::Channel>,
    id: u64,
) -> Option<Duration> {
    let mut details = client
        .watch_task_details(TaskDetailsRequest {
            id: Some(console_api::Id { id }),
        })
        .await
        .ok()?
        .into_inner();
    let details = tokio::time::timeout(Duration::from_secs(5), details.message())
        .await
        .ok()?
        .ok()??;
    match details.poll_times_histogram? {
        PollTimesHistogram::Histogram(histogram) => Some(Duration::from_nanos(histogram.max_value)),
        PollTimesHistogram::LegacyHistogram(_) => None,
    }
}

#[test]
fn tokio_console_and_hogwatch_name_the_same_blocking_task() {
    let console_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    tracing_subscriber::registry()
        .with(
            console_subscriber::ConsoleLayer::builder()
                .server_addr(console_addr)
                .publish_interval(Duration::from_millis(100))
                .spawn(),
        )
        .init();

    let detector = Detector::builder()
        .threshold(example::THRESHOLD)
        .build()
        .unwrap();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    let runtime = detector.instrument_runtime(&mut builder).build().unwrap();

    let console_task = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = listener.local_addr().unwrap();
        let app = example::app(&detector);
        tokio::spawn(async move { axum::serve(listener, app).await });
        for _ in 0..3 {
            assert!(get(app_addr, "/slow").await.contains("blocked a worker"));
            assert!(get(app_addr, "/fast").await.contains("never blocked"));
        }

        // The console's server starts on its own thread: retry until it answers.
        let endpoint = format!("http://{console_addr}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut client = loop {
            match InstrumentClient::connect(endpoint.clone()).await {
                Ok(client) => break client,
                Err(error) if Instant::now() > deadline => panic!("console unreachable: {error}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (id, mut task) = find_task(&mut client, "GET /slow").await;
        task.longest_poll = longest_poll(&mut client, id).await;
        task
    });
    drop(runtime);

    // tokio-console: the blocking task's longest poll, from console's poll-time histogram, is
    // over the threshold, and so is its busy time.
    let longest = console_task
        .longest_poll
        .unwrap_or_else(|| panic!("no poll-time histogram: {console_task:?}"));
    assert!(longest > example::THRESHOLD, "{console_task:?}");
    assert!(
        longest >= example::BLOCK - Duration::from_millis(5),
        "{console_task:?}"
    );
    assert!(
        console_task.busy >= example::BLOCK - Duration::from_millis(5),
        "{console_task:?}"
    );
    assert!(
        console_task.file.ends_with("examples/console.rs"),
        "{console_task:?}"
    );

    // hogwatch: the same task, by the same spawn location, one slow poll per request.
    let label = format!("task {}:{}", console_task.file, console_task.line);
    let report = detector.report();
    let entry = report
        .entry(&label)
        .unwrap_or_else(|| panic!("no {label} in\n{}", report.to_text()));
    assert_eq!(entry.kind, LabelKind::Task);
    assert_eq!(entry.slow_polls, 3, "{}", report.to_text());
    assert!(entry.max_poll_us >= 45_000, "{}", report.to_text());
    // The route saw the request; the block happened in the named task, not in the handler's poll.
    let route = report.entry("GET /slow").unwrap();
    assert_eq!((route.kind, route.requests), (LabelKind::Route, 3));
}
