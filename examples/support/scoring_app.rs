//! The two services of `examples/scoring.rs`, as functions `tests/examples.rs` reuses.
//!
//! A scoring service answers `POST /{variant}/score` (`{"customer": 42}`) by asking a model
//! service for two predictions (`POST /{variant}/model/predict`, `fraud` and `churn`, about 45 ms
//! each) and returning both. Three variants, each its own pair of routes:
//!
//! | variant | model handler | scoring handler |
//! |---|---|---|
//! | `sync` | `std::thread::sleep(45 ms)` | blocking client (`ureq`), one call after the other, in the async handler |
//! | `async` | `tokio::time::sleep(45 ms)` | async client (hyper-util), both calls at once with `tokio::join!` |
//! | `fixed-sync` | `std::thread::sleep(45 ms)` | the `sync` handler's blocking calls moved into `spawn_blocking` |
//!
//! **The model service is a separate service**, on its own listener and its own runtime
//! ([`ModelService::start`]), as it would be in production. If it shared the scoring service's
//! two workers, the experiment would measure a deadlock rather than blocking: two `sync` scoring
//! requests that hold both workers inside a blocking `ureq` call wait for a model request that no
//! worker is free to serve, until the client times out. The model's runtime gets one worker per
//! request it may have to serve at once (like a thread-per-request model server), so its own
//! `thread::sleep` delays nobody and the scoring service's latency is the scoring service's doing.

// Each example compiles its own copy of the support modules; only the scoring example and the
// tests use this one.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hogwatch::Detector;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The variants, in the order the experiment runs them.
pub const VARIANTS: [&str; 3] = ["sync", "async", "fixed-sync"];

/// How long one model prediction takes.
pub const MODEL_LATENCY: Duration = Duration::from_millis(45);

/// The body of `POST /{variant}/score`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    /// Whom to score.
    pub customer: u64,
}

/// The answer of `POST /{variant}/score`: the two models' predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Whom they are for.
    pub customer: u64,
    /// The `fraud` model's prediction.
    pub fraud: f64,
    /// The `churn` model's prediction.
    pub churn: f64,
}

/// The body of `POST /{variant}/model/predict`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictRequest {
    /// Which model: `fraud` or `churn`.
    pub model: String,
    /// Whom to predict for.
    pub customer: u64,
}

/// The answer of `POST /{variant}/model/predict`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The model that answered.
    pub model: String,
    /// Its score, in `0..1`.
    pub score: f64,
}

/// The model's deterministic "prediction", so a test can check the scoring service's answer.
pub fn predict(model: &str, customer: u64) -> f64 {
    let salt = model.bytes().fold(0u64, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(u64::from(byte))
    });
    let mixed = customer
        .wrapping_add(salt)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> 40;
    (mixed % 1000) as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// The model service.

/// The model service's routes, watched by `detector`'s layer.
pub fn model_app(detector: &Detector) -> Router {
    Router::new()
        .route("/sync/model/predict", post(predict_sync))
        .route("/async/model/predict", post(predict_async))
        .route("/fixed-sync/model/predict", post(predict_sync))
        .layer(detector.layer())
}

/// A model that computes synchronously: 45 ms of a blocked thread.
async fn predict_sync(Json(request): Json<PredictRequest>) -> Json<Prediction> {
    std::thread::sleep(MODEL_LATENCY);
    prediction(request)
}

/// A model that waits asynchronously (a GPU, a queue, another service): 45 ms, no thread held.
async fn predict_async(Json(request): Json<PredictRequest>) -> Json<Prediction> {
    tokio::time::sleep(MODEL_LATENCY).await;
    prediction(request)
}

fn prediction(request: PredictRequest) -> Json<Prediction> {
    let score = predict(&request.model, request.customer);
    Json(Prediction {
        model: request.model,
        score,
    })
}

/// The model service running on its own thread, runtime and listener; stopped when dropped.
#[derive(Debug)]
pub struct ModelService {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ModelService {
    /// Starts [`model_app`] on `127.0.0.1:0` on a new multi-thread runtime with `workers` worker
    /// threads: at least the number of `sync` predictions it may have to serve at once, or they
    /// queue behind each other's `thread::sleep`.
    ///
    /// # Errors
    /// If the listener or the runtime cannot be created.
    pub fn start(detector: &Detector, workers: usize) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("model-service")
            .enable_all()
            .build()?;
        let app = model_app(detector);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("model-service".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let serve = async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        axum::serve(listener, app).await
                    };
                    tokio::select! {
                        result = serve => {
                            if let Err(error) = result {
                                eprintln!("model service stopped: {error}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Connections still open (clients' idle keep-alive ones) are dropped here.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(ModelService {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ModelService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scoring service.

/// The scoring service's clients of the model service at `model`.
#[derive(Clone, Debug)]
struct Scorer {
    model: SocketAddr,
    /// Blocking client: each call holds its thread until the answer arrives.
    blocking: ureq::Agent,
    /// Async client: a call waits without holding a thread.
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The scoring service's routes (`POST /{variant}/score`, `GET /health`), calling the model
/// service at `model`, watched by `detector`'s layer, with `/debug/hogs` merged in.
pub fn app(detector: &Detector, model: SocketAddr) -> Router {
    let blocking: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections(256)
        .max_idle_connections_per_host(256)
        .build()
        .into();
    let client = Client::builder(TokioExecutor::new()).build_http();
    Router::new()
        .route("/sync/score", post(score_sync))
        .route("/async/score", post(score_async))
        .route("/fixed-sync/score", post(score_fixed_sync))
        .route("/health", get(|| async { "ok" }))
        .with_state(Scorer {
            model,
            blocking,
            client,
        })
        .layer(detector.layer())
        .merge(detector.router())
}

/// The mistake: a blocking client inside an async handler. Both calls run one after the other
/// in one poll, holding the worker thread for about 90 ms.
async fn score_sync(State(scorer): State<Scorer>, Json(request): Json<ScoreRequest>) -> Response {
    respond(scorer.score_blocking("sync", request.customer))
}

/// The async way: both calls at once, no thread held while they wait.
async fn score_async(State(scorer): State<Scorer>, Json(request): Json<ScoreRequest>) -> Response {
    let (fraud, churn) = tokio::join!(
        scorer.call_async("async", "fraud", request.customer),
        scorer.call_async("async", "churn", request.customer),
    );
    respond(fraud.and_then(|fraud| {
        Ok(Scores {
            customer: request.customer,
            fraud,
            churn: churn?,
        })
    }))
}

/// The fix when the client must stay blocking: run it on tokio's blocking pool.
async fn score_fixed_sync(
    State(scorer): State<Scorer>,
    Json(request): Json<ScoreRequest>,
) -> Response {
    let scores =
        tokio::task::spawn_blocking(move || scorer.score_blocking("fixed-sync", request.customer))
            .await;
    respond(scores.unwrap_or_else(|error| Err(error.to_string())))
}

impl Scorer {
    fn url(&self, variant: &str) -> String {
        format!("http://{}/{variant}/model/predict", self.model)
    }

    fn score_blocking(&self, variant: &str, customer: u64) -> Result<Scores, String> {
        Ok(Scores {
            customer,
            fraud: self.call_blocking(variant, "fraud", customer)?,
            churn: self.call_blocking(variant, "churn", customer)?,
        })
    }

    fn call_blocking(&self, variant: &str, model: &str, customer: u64) -> Result<f64, String> {
        let body = predict_body(model, customer)?;
        let answer = self
            .blocking
            .post(self.url(variant))
            .header(CONTENT_TYPE.as_str(), "application/json")
            .send(body.as_ref())
            .and_then(|mut response| response.body_mut().read_to_vec())
            .map_err(|e| format!("model {model}: {e}"))?;
        parse_prediction(&answer)
    }

    async fn call_async(&self, variant: &str, model: &str, customer: u64) -> Result<f64, String> {
        let request = axum::http::Request::post(self.url(variant))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(predict_body(model, customer)?))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("model {model}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("model {model}: {}", response.status()));
        }
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("model {model}: {e}"))?
            .to_bytes();
        parse_prediction(&answer)
    }
}

fn predict_body(model: &str, customer: u64) -> Result<Bytes, String> {
    let request = PredictRequest {
        model: model.to_owned(),
        customer,
    };
    serde_json::to_vec(&request)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

fn parse_prediction(answer: &[u8]) -> Result<f64, String> {
    serde_json::from_slice::<Prediction>(answer)
        .map(|prediction| prediction.score)
        .map_err(|e| format!("bad prediction: {e}"))
}

/// The scores as JSON, or a 502: the model service failed us.
fn respond(scores: Result<Scores, String>) -> Response {
    match scores {
        Ok(scores) => Json(scores).into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response(),
    }
}
