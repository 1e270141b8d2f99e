//! The core in a minute: watch a few futures, one of which blocks, and print the report.
//!
//! `cargo run --release --example quickstart`

use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(true).init();
    let detector = hogwatch::Detector::builder()
        .threshold(Duration::from_millis(5))
        .build()?;

    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let detector = detector.clone();
        tasks.push(tokio::spawn(async move {
            // Well-behaved: waits without holding the worker.
            detector
                .watch("async-sleep", tokio::time::sleep(Duration::from_millis(20)))
                .await;
            // The classic mistake: a blocking sleep inside async code.
            if i % 10 == 0 {
                detector
                    .watch("thread-sleep", async {
                        std::thread::sleep(Duration::from_millis(25));
                    })
                    .await;
            }
            // CPU work on the executor: parse and re-serialise a JSON document.
            detector
                .watch("json-round-trip", async move {
                    let text = serde_json::to_string(&document(2_000 + i * 100))?;
                    let value: serde_json::Value = serde_json::from_str(&text)?;
                    serde_json::to_string(&value).map(|out| out.len())
                })
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("{}", detector.report().to_text());
    Ok(())
}

fn document(records: u64) -> serde_json::Value {
    (0..records)
        .map(|i| serde_json::json!({"id": i, "name": format!("item-{i}"), "price": i as f64 / 3.0}))
        .collect()
}
