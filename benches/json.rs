//! What the JSON round-trip costs next to sending the cached document as it is.
//!
//! One group per document size (`json_small` ≈ 1 KB, `json_medium` ≈ 100 KB, `json_big` ≈ 2 MB,
//! the same deterministic documents as the JSON example), throughput in bytes of the document:
//!
//! - `passthrough`: what `/passthrough` does, clone the cached `Bytes` handle into a JSON response;
//! - `passthrough_copy`: the same from a cached `String`, so one copy of the document;
//! - `serde_value_round_trip`: what `/blocking` does, parse into `serde_json::Value`, serialise,
//!   respond; `serde_typed_round_trip`: the same through the typed records;
//! - `serde_parse_value`, `serde_serialise_value`: each half alone;
//! - `simd_owned_round_trip`: what `/simd` does, copy the bytes (simd-json parses in place), parse
//!   into an owned value, serialise, respond; `simd_borrowed_round_trip`: into a borrowed value.
//!
//! Values and responses are dropped inside the measured loop, as a handler drops them.
//! Run: `cargo bench --bench json` (about 2.5 min on 2 cores; `-- --quick`: under a minute;
//! `-- json_big`: one size). Figures in `BENCHMARKS.md`.

use std::hint::black_box;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use simd_json::prelude::Writable;

#[path = "../examples/support/documents.rs"]
mod documents;

use documents::{Catalogue, Size};

/// What a handler returns: the body with `content-type: application/json`.
fn respond(body: impl Into<Body>) -> Response {
    ([(CONTENT_TYPE, "application/json")], body.into()).into_response()
}

fn json(c: &mut Criterion) {
    for size in Size::all() {
        let text = documents::document(size);
        let cached = Bytes::from(text.clone());
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid document");

        let mut group = c.benchmark_group(format!("json_{}", size.key()));
        group.throughput(Throughput::Bytes(text.len() as u64));
        // Enough samples for a stable median without making `cargo bench` long on 2 cores; the
        // measurement time also bounds each benchmark in `--quick` mode.
        match size {
            Size::Small => group
                .sample_size(50)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2)),
            Size::Medium => group
                .sample_size(30)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3)),
            Size::Big => group
                .sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(4)),
        };

        group.bench_function("passthrough", |b| b.iter(|| respond(cached.clone())));
        group.bench_function("passthrough_copy", |b| b.iter(|| respond(text.clone())));
        group.bench_function("serde_value_round_trip", |b| {
            b.iter(|| {
                let value: serde_json::Value =
                    serde_json::from_str(black_box(&text)).expect("valid document");
                respond(serde_json::to_string(&value).expect("a Value serialises"))
            })
        });
        group.bench_function("serde_typed_round_trip", |b| {
            b.iter(|| {
                let value: Catalogue =
                    serde_json::from_str(black_box(&text)).expect("valid document");
                respond(serde_json::to_string(&value).expect("records serialise"))
            })
        });
        group.bench_function("serde_parse_value", |b| {
            b.iter(|| {
                serde_json::from_str::<serde_json::Value>(black_box(&text)).expect("valid document")
            })
        });
        group.bench_function("serde_serialise_value", |b| {
            b.iter(|| serde_json::to_string(black_box(&parsed)).expect("a Value serialises"))
        });
        group.bench_function("simd_owned_round_trip", |b| {
            b.iter(|| {
                let mut bytes = black_box(text.as_bytes()).to_vec();
                let value = simd_json::to_owned_value(&mut bytes).expect("valid document");
                respond(value.encode())
            })
        });
        group.bench_function("simd_borrowed_round_trip", |b| {
            b.iter(|| {
                let mut bytes = black_box(text.as_bytes()).to_vec();
                let value = simd_json::to_borrowed_value(&mut bytes).expect("valid document");
                respond(value.encode())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, json);
criterion_main!(benches);
