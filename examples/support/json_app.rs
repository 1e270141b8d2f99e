//! The JSON service of `examples/json_service.rs`, as a function `tests/examples.rs` reuses.
//!
//! A cache of pre-serialised JSON documents (`small` ≈ 1 KB, `medium` ≈ 100 KB, `big` ≈ 2 MB, from
//! [`documents`](super::documents)) and four ways of answering `GET /{variant}/{key}` with one:
//!
//! | route | what the handler does | where the CPU work runs |
//! |---|---|---|
//! | `/blocking/{key}` | `serde_json` parse into `Value`, serialise again | on the executor: blocks it |
//! | `/passthrough/{key}` | sends the cached bytes as they are | nowhere: a handle clone |
//! | `/offload/{key}` | the `/blocking` round-trip in `spawn_blocking`, at most [`offload_threads`] at once | tokio's blocking pool |
//! | `/simd/{key}` | the round-trip with simd-json | on the executor |
//!
//! plus `GET /health`, the canary's route. An unknown key is a 404.

// Each example compiles its own copy of the support modules; only the JSON example and the tests
// use this one.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hogwatch::Detector;
use simd_json::prelude::Writable;

use tokio::sync::Semaphore;

use super::documents::{self, Size};

/// The variants, in the order the experiment runs them, with the route each one is served on.
pub const VARIANTS: [(&str, &str); 4] = [
    ("blocking", "/blocking/{key}"),
    ("simd", "/simd/{key}"),
    ("offload", "/offload/{key}"),
    ("passthrough", "/passthrough/{key}"),
];

/// The in-memory cache: key (`small`, `medium`, `big`) -> the pre-serialised document.
///
/// Documents are `Bytes`, so handing one to a response is a reference-count increment, not a
/// copy of up to 2 MB (`passthrough_copy` in `benches/json.rs` is what a cached `String` costs).
/// Cloning the cache clones the map's handle.
#[derive(Debug, Clone)]
pub struct Cache {
    documents: Arc<HashMap<&'static str, Bytes>>,
}

impl Cache {
    /// A cache of the documents of `sizes`.
    pub fn new(sizes: impl IntoIterator<Item = Size>) -> Self {
        let documents = sizes
            .into_iter()
            .map(|size| (size.key(), Bytes::from(documents::document(size))))
            .collect();
        Cache {
            documents: Arc::new(documents),
        }
    }

    /// A cache of all three documents.
    pub fn all() -> Self {
        Cache::new(Size::all())
    }

    /// The cached document of `key`, if any (a cheap handle).
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.documents.get(key).cloned()
    }
}

/// How many `/offload` round-trips run at once: one fewer than the CPUs, at least one.
///
/// `spawn_blocking` alone would start a thread per waiting request (up to 512): with 20
/// connections on 2 cores, 20 CPU-bound threads would share the cores with the 2 executor
/// workers, and the scheduler would preempt the workers for tens of milliseconds in the middle of
/// their (short) polls. hogwatch measures polls in wall-clock time, which is what the requests
/// queued on a worker wait, so it would rightly report slow polls on every route. Offloading CPU
/// work only frees the executor if the pool leaves it a core.
pub fn offload_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |cpus| cpus.get().saturating_sub(1))
        .max(1)
}

#[derive(Debug, Clone)]
struct AppState {
    cache: Cache,
    /// Permits for `/offload`'s round-trips, [`offload_threads`] of them.
    offload: Arc<Semaphore>,
}

/// The service: the routes above, watched by `detector`'s layer (each labelled `GET /route/{key}`),
/// with `detector`'s `/debug/hogs` endpoint merged in.
pub fn app(detector: &Detector, cache: Cache) -> Router {
    let state = AppState {
        cache,
        offload: Arc::new(Semaphore::new(offload_threads())),
    };
    Router::new()
        .route("/blocking/{key}", get(blocking))
        .route("/passthrough/{key}", get(passthrough))
        .route("/offload/{key}", get(offload))
        .route("/simd/{key}", get(simd))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
        .layer(detector.layer())
        .merge(detector.router())
}

/// The mistake: parse and serialise again on the executor thread (`json.loads` + `json.dumps`).
async fn blocking(
    State(AppState { cache, .. }): State<AppState>,
    Path(key): Path<String>,
) -> Response {
    match cache.get(&key) {
        Some(document) => json(serde_round_trip(&document)),
        None => not_found(&key),
    }
}

/// The fix: the cached document is already JSON; send it as it is.
async fn passthrough(
    State(AppState { cache, .. }): State<AppState>,
    Path(key): Path<String>,
) -> Response {
    match cache.get(&key) {
        Some(document) => json(Ok(document)),
        None => not_found(&key),
    }
}

/// The thread-pool fix: the same round-trip, on tokio's blocking pool. The handler's future only
/// waits for it, so its polls are short; the CPU work still costs the same.
async fn offload(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    let Some(document) = state.cache.get(&key) else {
        return not_found(&key);
    };
    // Waiting for a permit is asynchronous: the worker serves other requests meanwhile.
    let Ok(permit) = state.offload.acquire_owned().await else {
        return internal_error(&"the offload pool is closed");
    };
    let round_trip = move || {
        let body = serde_round_trip(&document);
        drop(permit);
        body
    };
    match tokio::task::spawn_blocking(round_trip).await {
        Ok(result) => json(result),
        Err(error) => internal_error(&error),
    }
}

/// A faster parser, still on the executor: is it enough?
async fn simd(State(AppState { cache, .. }): State<AppState>, Path(key): Path<String>) -> Response {
    match cache.get(&key) {
        Some(document) => json(simd_round_trip(&document)),
        None => not_found(&key),
    }
}

/// Parses `document` into a `serde_json::Value` and serialises it again.
pub fn serde_round_trip(document: &[u8]) -> Result<Bytes, String> {
    let value: serde_json::Value = serde_json::from_slice(document).map_err(|e| e.to_string())?;
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// The same with simd-json, which parses in place: it needs its own mutable copy of the bytes.
pub fn simd_round_trip(document: &[u8]) -> Result<Bytes, String> {
    let mut copy = document.to_vec();
    let value = simd_json::to_owned_value(&mut copy).map_err(|e| e.to_string())?;
    Ok(Bytes::from(value.encode()))
}

fn json(body: Result<Bytes, String>) -> Response {
    match body {
        Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => internal_error(&error),
    }
}

fn not_found(key: &str) -> Response {
    let sizes = Size::all().map(Size::key).join(", ");
    (
        StatusCode::NOT_FOUND,
        format!("no document {key:?}; try one of {sizes}\n"),
    )
        .into_response()
}

fn internal_error(error: &dyn std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
}
