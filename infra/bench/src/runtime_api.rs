//! A minimal Lambda Runtime API on loopback: hands out one invocation and records when the
//! function posts its response (or an init / invocation error).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{oneshot, Notify};

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

struct Inner {
    event: String,
    served: bool,
    done: Option<oneshot::Sender<Outcome>>,
    park: Arc<Notify>,
}

#[derive(Clone)]
struct Api(Arc<Mutex<Inner>>);

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

/// Serves `event` as the one invocation.
pub async fn start(event: String) -> std::io::Result<RuntimeApi> {
    let (tx, rx) = oneshot::channel();
    let api = Api(Arc::new(Mutex::new(Inner { event, served: false, done: Some(tx), park: Arc::new(Notify::new()) })));
    let router = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(error_init))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(RuntimeApi { addr, outcome: rx, task })
}

async fn next(State(api): State<Api>) -> Response {
    let (event, park) = {
        let mut inner = api.0.lock().unwrap_or_else(|p| p.into_inner());
        let park = Arc::clone(&inner.park);
        if inner.served {
            (None, park)
        } else {
            inner.served = true;
            (Some(inner.event.clone()), park)
        }
    };
    match event {
        Some(e) => {
            let mut h = HeaderMap::new();
            h.insert("lambda-runtime-aws-request-id", HeaderValue::from_static("bench-request-1"));
            let deadline = (chrono::Utc::now().timestamp_millis() + 30_000).to_string();
            h.insert("lambda-runtime-deadline-ms", HeaderValue::from_str(&deadline).expect("digits"));
            h.insert(
                "lambda-runtime-invoked-function-arn",
                HeaderValue::from_static("arn:aws:lambda:us-east-1:000000000000:function:bench"),
            );
            h.insert("lambda-runtime-trace-id", HeaderValue::from_static("Root=1-00000000-000000000000000000000000"));
            (StatusCode::OK, h, e).into_response()
        }
        None => {
            // Like Lambda: the next call blocks until the sandbox is frozen (here: killed).
            park.notified().await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

fn finish(api: &Api, outcome: Outcome) {
    if let Some(tx) = api.0.lock().unwrap_or_else(|p| p.into_inner()).done.take() {
        let _ = tx.send(outcome);
    }
}

async fn response(State(api): State<Api>, Path(_id): Path<String>, body: Bytes) -> StatusCode {
    finish(&api, Outcome::Response { at: Instant::now(), body: String::from_utf8_lossy(&body).into_owned() });
    StatusCode::ACCEPTED
}

async fn error(State(api): State<Api>, Path(_id): Path<String>, body: Bytes) -> StatusCode {
    finish(&api, Outcome::Error { at: Instant::now(), body: String::from_utf8_lossy(&body).into_owned() });
    StatusCode::ACCEPTED
}

async fn error_init(State(api): State<Api>, body: Bytes) -> StatusCode {
    finish(&api, Outcome::Error { at: Instant::now(), body: String::from_utf8_lossy(&body).into_owned() });
    StatusCode::ACCEPTED
}
