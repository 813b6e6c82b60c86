//! A minimal Lambda Runtime API on loopback: hands out invocations and records when the
//! function posts each response (or an init / invocation error).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::oneshot;

#[derive(Debug, Clone)]
pub enum Outcome {
    /// The function's answer (for API Gateway: the proxy response JSON).
    Response {
        at: Instant,
        body: String,
    },
    Error {
        at: Instant,
        body: String,
    },
}

pub struct RuntimeApi {
    pub addr: SocketAddr,
    pub outcome: oneshot::Receiver<Outcome>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `event` as the one invocation: a [`Queue`] with one event, whose first answer is
/// `outcome`. Like Lambda, the function's next `/next` call blocks until the sandbox is frozen
/// (here: dropped).
pub async fn start(event: String) -> std::io::Result<RuntimeApi> {
    let mut q = queue().await?;
    q.push(event);
    let addr = q.addr;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        if let Some((_, o)) = q.outcomes.recv().await {
            let _ = tx.send(o);
        }
        // `q` (its server and its open event channel) lives until this task is aborted.
        std::future::pending::<()>().await;
    });
    Ok(RuntimeApi { addr, outcome: rx, task })
}

/// A Runtime API that hands out events as they are queued, one at a time, for a function that
/// stays up between invocations (cold, then warm, like a Lambda execution environment).
pub struct Queue {
    pub addr: SocketAddr,
    events: tokio::sync::mpsc::UnboundedSender<String>,
    outcomes: tokio::sync::mpsc::UnboundedReceiver<(Instant, Outcome)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Queue {
    /// Hands `event` to the function's next `/next` call.
    pub fn push(&self, event: String) {
        let _ = self.events.send(event);
    }

    /// The next answer, with when its event was handed out; `None` after `within`.
    pub async fn outcome(&mut self, within: std::time::Duration) -> Option<(Instant, Outcome)> {
        tokio::time::timeout(within, self.outcomes.recv()).await.ok().flatten()
    }
}

#[derive(Clone)]
struct QueueState {
    events: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    outcomes: tokio::sync::mpsc::UnboundedSender<(Instant, Outcome)>,
    handed: Arc<Mutex<Instant>>,
    n: Arc<std::sync::atomic::AtomicU64>,
}

pub async fn queue() -> std::io::Result<Queue> {
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let state = QueueState {
        events: Arc::new(tokio::sync::Mutex::new(events_rx)),
        outcomes: out_tx,
        handed: Arc::new(Mutex::new(Instant::now())),
        n: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let router = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(queue_next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(queue_response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(queue_error))
        .route("/2018-06-01/runtime/init/error", post(queue_init_error))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Queue { addr, events: events_tx, outcomes: out_rx, task })
}

async fn queue_next(State(q): State<QueueState>) -> Response {
    let Some(event) = q.events.lock().await.recv().await else {
        return StatusCode::NO_CONTENT.into_response();
    };
    *q.handed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    let n = q.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let mut h = HeaderMap::new();
    h.insert("lambda-runtime-aws-request-id", HeaderValue::from_str(&format!("bench-request-{n}")).expect("ascii"));
    let deadline = (chrono::Utc::now().timestamp_millis() + 30_000).to_string();
    h.insert("lambda-runtime-deadline-ms", HeaderValue::from_str(&deadline).expect("digits"));
    h.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:000000000000:function:bench"),
    );
    h.insert("lambda-runtime-trace-id", HeaderValue::from_static("Root=1-00000000-000000000000000000000000"));
    (StatusCode::OK, h, event).into_response()
}

fn queue_finish(q: &QueueState, outcome: Outcome) {
    let handed = *q.handed.lock().unwrap_or_else(|p| p.into_inner());
    let _ = q.outcomes.send((handed, outcome));
}

async fn queue_response(State(q): State<QueueState>, Path(_id): Path<String>, body: Bytes) -> StatusCode {
    queue_finish(&q, Outcome::Response { at: Instant::now(), body: String::from_utf8_lossy(&body).into_owned() });
    StatusCode::ACCEPTED
}

async fn queue_error(State(q): State<QueueState>, Path(_id): Path<String>, body: Bytes) -> StatusCode {
    queue_finish(&q, Outcome::Error { at: Instant::now(), body: String::from_utf8_lossy(&body).into_owned() });
    StatusCode::ACCEPTED
}

async fn queue_init_error(State(q): State<QueueState>, body: Bytes) -> StatusCode {
    queue_finish(&q, Outcome::Error { at: Instant::now(), body: String::from_utf8_lossy(&body).into_owned() });
    StatusCode::ACCEPTED
}
