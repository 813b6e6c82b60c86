//! What the paying user waits for, on a latency model: every backend (DynamoDB, Cognito, API
//! Gateway and SSM on moto_server; Stripe on the project's emulator) behind its own loopback
//! proxy that holds each new connection for a handshake and each request for the service's
//! round trip ([`MODEL`], figures with their sources). The deployable binaries run under a
//! Lambda Runtime API emulator with their secrets in SSM (`*_PARAMETER`), cold (exec → first
//! answer: init, SSM, every first connection) and warm (the same process's next invocations);
//! the Python reference (`reference/flows.py`) the same way, on the same proxies, in the same
//! run. Each invocation gets its own user and state, prepared beforehand through paykey's own
//! adapters straight to moto and the emulator (not through the proxies, not timed).

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use paykey::adapters::aws::{ApiGatewayKeys, CognitoUsers, DynamoStore};
use paykey::adapters::stripe::StripePayments;
use paykey::config::{self, Env, Secret, StripeConfig, Tables};
use paykey::domain::{SessionId, User, UserId, UserName};
use paykey::flows::{self, CheckoutRequest};
use paykey::handlers::App;
use paykey::ports::{Checkouts, RandomIds, SystemClock};
use serde_json::{json, Value};

use crate::runtime_api::{self, Outcome};

const WEBHOOK_SECRET: &str = "whsec_latency_model";
const STRIPE_KEY: &str = "sk_test_latency_model";
const APP_URL: &str = "https://app.paykey.test";

/// One backend's place in the model.
pub struct Service {
    pub name: &'static str,
    /// Added before a new connection is served: TCP's round trip, TLS 1.3's round trip and the
    /// key exchange.
    pub handshake_ms: u64,
    /// Added to each request, by operation (the service's time and the network's round trip).
    pub request_ms: fn(&Method, &str, &HeaderMap) -> u64,
    /// What the figures rest on.
    pub source: &'static str,
}

fn target(h: &HeaderMap) -> &str {
    h.get("x-amz-target").and_then(|v| v.to_str().ok()).and_then(|t| t.rsplit('.').next()).unwrap_or("")
}

/// The figures (p50, a client in a Lambda function in us-east-1). Where no source gives a
/// number the figure is an estimate and says so.
pub const MODEL: [Service; 5] = [
    Service {
        name: "DynamoDB",
        handshake_ms: 8,
        request_ms: |_, _, h| match target(h) {
            "GetItem" | "Query" | "BatchGetItem" => 5,
            "TransactWriteItems" | "TransactGetItems" => 25,
            _ => 8,
        },
        source: "PutItem p50 7.55 ms, TransactWriteItems (5 items) p50 25.3 ms from a Lambda in us-east-1 (github.com/alexdebrie/dynamodb-performance-testing); GetItem \"single-digit milliseconds\" (repost.aws/knowledge-center/dynamodb-high-latency), 5 ms taken; handshake: TCP + TLS 1.3 = 2 round trips of 1–2 ms within a Region (AWS fault-isolation whitepaper: AZs \"single-digit millisecond\" apart) plus key exchange, ~8 ms (estimate)",
    },
    Service {
        name: "Cognito",
        handshake_ms: 8,
        request_ms: |_, _, h| if target(h).starts_with("AdminUpdate") { 70 } else { 50 },
        source: "estimate: no published figure (nearest: a us-east-1 Lambda's Cognito admin calls took 252 ms with its own overhead, aws-amplify/amplify-cli#5826); 50 ms reads, 70 ms AdminUpdateUserAttributes",
    },
    Service {
        name: "API Gateway",
        handshake_ms: 8,
        request_ms: |_, _, _| 200,
        source: "estimate: no published figure for the control plane (SDK logs of 0.4–0.8 s for getRestApis, aws/aws-sdk-js#1014, location unknown); 200 ms per call (its 10 calls/s per account quota is not modelled)",
    },
    Service {
        name: "SSM",
        handshake_ms: 8,
        request_ms: |_, _, _| 25,
        source: "estimate: AWS publishes none (docs: Parameters and Secrets extension, \"faster than retrieving it from Parameter Store\"); 25 ms per GetParameter(s)",
    },
    Service {
        name: "Stripe",
        handshake_ms: 15,
        request_ms: |m, _, _| if m == Method::GET { 200 } else { 400 },
        source: "estimate: Stripe publishes no response times (stripe/stripe-java#570); 200 ms reads, 400 ms creates; api.stripe.com runs on AWS and negotiates TLS 1.3; handshake ~15 ms (estimate)",
    },
];

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
}

struct Proxy {
    base: String,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn proxy(service: &'static Service, upstream: String, scale: f64) -> std::io::Result<Proxy> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let counts = Arc::new(Counts::default());
    let client: Upstream = Client::builder(TokioExecutor::new()).build_http();
    let c = Arc::clone(&counts);
    let ms = move |v: u64| Duration::from_secs_f64(v as f64 * scale / 1000.0);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let (client, upstream, c) = (client.clone(), upstream.clone(), Arc::clone(&c));
            tokio::spawn(async move {
                tokio::time::sleep(ms(service.handshake_ms)).await;
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (client, upstream, c) = (client.clone(), upstream.clone(), Arc::clone(&c));
                    async move {
                        c.requests.fetch_add(1, Ordering::SeqCst);
                        let wait = ms((service.request_ms)(req.method(), req.uri().path(), req.headers()));
                        tokio::time::sleep(wait).await;
                        forward(&client, &upstream, req).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Proxy { base, counts, task })
}

/// The request to the backend and its answer back, without hop-by-hop headers: moto closes
/// every connection, the client's connection to the proxy stays open as it would to AWS.
async fn forward(
    client: &Upstream,
    upstream: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = Request::builder().method(parts.method).uri(format!("{upstream}{path}"));
    for (k, v) in &parts.headers {
        if !matches!(k.as_str(), "connection" | "keep-alive" | "transfer-encoding" | "proxy-connection") {
            out = out.header(k, v);
        }
    }
    let failed = |e: String| {
        let mut r = Response::new(Full::new(Bytes::from(e)));
        *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
        r
    };
    let req = match out.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return Ok(failed(e.to_string())),
    };
    match client.request(req).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let mut r = Response::new(Full::new(body));
            *r.status_mut() = parts.status;
            for (k, v) in &parts.headers {
                if !matches!(k.as_str(), "connection" | "keep-alive" | "transfer-encoding" | "content-length") {
                    r.headers_mut().append(k, v.clone());
                }
            }
            Ok(r)
        }
        Err(e) => Ok(failed(e.to_string())),
    }
}

/// The four flows a paying user waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flow {
    Checkout,
    Redirect,
    Account,
    Webhook,
}

impl Flow {
    const ALL: [Flow; 4] = [Flow::Redirect, Flow::Checkout, Flow::Account, Flow::Webhook];

    fn binary(self) -> &'static str {
        match self {
            Flow::Checkout => "create-checkout-session",
            Flow::Redirect => "create-api-key",
            Flow::Account => "get-account",
            Flow::Webhook => "stripe-webhook",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Flow::Checkout => "checkout (POST /checkout-sessions)",
            Flow::Redirect => "success redirect (first purchase)",
            Flow::Account => "/account (PRO user)",
            Flow::Webhook => "webhook (customer.subscription.deleted, record > 1 s old)",
        }
    }

    fn expected(self) -> u16 {
        match self {
            Flow::Redirect => 302,
            _ => 200,
        }
    }
}

type BenchApp = App<DynamoStore, ApiGatewayKeys, CognitoUsers, StripePayments>;

/// moto, the emulator, the resources, and paykey's own adapters straight to them.
struct World {
    app: BenchApp,
    idp: aws_sdk_cognitoidentityprovider::Client,
    pool: String,
    stripe_base: String,
    env: Vec<(String, String)>,
    http: Client<HttpConnector, Full<Bytes>>,
    n: AtomicU64,
    _emulator: tokio::task::JoinHandle<()>,
}

async fn world(moto: &str, prefix: &str) -> Result<World, String> {
    let aws = aws_config::defaults(BehaviorVersion::latest())
        .http_client(
            paykey::adapters::https::AwsHttpClient::new(&Default::default()).map_err(|e| e.to_string())?.shared(),
        )
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(moto)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await;
    // PRO without a quota: moto 5.2.5 has no GetUsage (as in tests/lambdas.rs).
    let catalog = paykey::domain::Catalog::parse(
        r#"{"tiers": [{"name": "FREE"}, {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "set-by-provision"}]}"#,
    )
    .map_err(|e| e.to_string())?;
    let res = paykey_local::provision::provision(&aws, prefix, &catalog).await?;
    let ssm = aws_sdk_ssm::Client::new(&aws);
    for (name, value) in
        [(format!("/{prefix}/stripe-key"), STRIPE_KEY), (format!("/{prefix}/webhook-secret"), WEBHOOK_SECRET)]
    {
        ssm.put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .map_err(|e| format!("PutParameter on moto: {e:?}"))?;
    }
    let emulator = stripe_emulator::Shared::new(stripe_emulator::Config {
        webhook_url: None,
        webhook_secret: WEBHOOK_SECRET.into(),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let stripe_base = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let router = emulator.clone().router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    emulator.set_base(&stripe_base);
    let (_, product) = emulator.call("POST", "/v1/products", "name=FMMail+PRO");
    let form = format!(
        "product={}&unit_amount=980&currency=jpy&recurring[interval]=month&lookup_key=FMMailPro",
        product["id"].as_str().unwrap_or_default()
    );
    emulator.call("POST", "/v1/prices", &form);
    let (_, portal) =
        emulator.call("POST", "/v1/billing_portal/configurations", "features[subscription_cancel][enabled]=true");
    let portal = portal["id"].as_str().unwrap_or_default().to_string();
    let env: Vec<(String, String)> = [
        ("MY_DOMAIN", APP_URL.to_string()),
        ("API_URL", "https://api.paykey.test/prod".to_string()),
        ("USER_POOL_ID", res.user_pool_id.clone()),
        ("DYNAMODB_STRIPE_TABLE", res.sessions_table.clone()),
        ("DYNAMODB_API_KEY_TABLE", res.api_keys_table.clone()),
        ("PAYKEY_CATALOG", res.catalog_json.clone()),
        ("STRIPE_API_KEY_PARAMETER", format!("/{prefix}/stripe-key")),
        ("STRIPE_WEBHOOK_SECRET_PARAMETER", format!("/{prefix}/webhook-secret")),
        ("STRIPE_PORTAL_CONFIGURATION", portal),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let pairs: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain([("STRIPE_API_BASE", stripe_base.as_str())]).collect();
    let penv = Env::from_pairs(pairs);
    let settings = config::settings(&penv).map_err(|e| e.to_string())?;
    let stripe_cfg = StripeConfig::with_secret(&penv, Secret::new(STRIPE_KEY)).map_err(|e| e.to_string())?;
    let app = App {
        store: DynamoStore::new(
            &aws,
            Tables { sessions: res.sessions_table.clone(), api_keys: res.api_keys_table.clone() },
        ),
        keys: ApiGatewayKeys::new(&aws),
        users: CognitoUsers::new(&aws, res.user_pool_id.clone()),
        payments: StripePayments::new(&stripe_cfg).map_err(|e| e.to_string())?,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        settings,
    };
    Ok(World {
        idp: aws_sdk_cognitoidentityprovider::Client::new(&aws),
        app,
        pool: res.user_pool_id,
        stripe_base,
        env,
        http: Client::builder(TokioExecutor::new()).build_http(),
        n: AtomicU64::new(0),
        _emulator: task,
    })
}

impl World {
    async fn user(&self) -> Result<User, String> {
        let name = format!("lat{}", self.n.fetch_add(1, Ordering::SeqCst));
        self.idp
            .admin_create_user()
            .user_pool_id(&self.pool)
            .username(&name)
            .message_action(aws_sdk_cognitoidentityprovider::types::MessageActionType::Suppress)
            .send()
            .await
            .map_err(|e| format!("AdminCreateUser: {e:?}"))?;
        let u = self
            .idp
            .admin_get_user()
            .user_pool_id(&self.pool)
            .username(&name)
            .send()
            .await
            .map_err(|e| format!("AdminGetUser: {e:?}"))?;
        let sub = u.user_attributes().iter().find(|a| a.name() == "sub").and_then(|a| a.value()).unwrap_or_default();
        Ok(User {
            id: UserId::parse(sub).map_err(|e| e.to_string())?,
            name: UserName::parse(&name).map_err(|e| e.to_string())?,
        })
    }

    /// A paid session of a new user: (user, session id, one-time key).
    async fn paid(&self) -> Result<(User, SessionId, String), String> {
        let u = self.user().await?;
        let a = &self.app;
        let started =
            flows::start_checkout(&a.users, &a.payments, &a.store, a.ctx(), &u, CheckoutRequest::new("FMMailPro"))
                .await
                .map_err(|e| format!("checkout: {e}"))?;
        let id = SessionId::parse(started.url.rsplit('/').next().unwrap_or_default()).map_err(|e| e.to_string())?;
        let key = a.store.get(&id).await.map_err(|e| e.to_string())?.ok_or("no record")?.one_time_key.to_string();
        // Paid on the emulator's checkout page, as a browser would.
        let req = Request::post(started.url.replace("https://checkout.stripe.com", &self.stripe_base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"card_number=4242+4242+4242+4242&exp=12%2F34&cvc=123")))
            .map_err(|e| e.to_string())?;
        let r = self.http.request(req).await.map_err(|e| format!("paying: {e}"))?;
        if r.status() != 303 {
            return Err(format!("paying on the emulator: {}", r.status()));
        }
        Ok((u, id, key))
    }

    /// A PRO user (fulfilled through paykey's own flow): (user, subscription id).
    async fn pro(&self) -> Result<(User, String), String> {
        let (u, id, key) = self.paid().await?;
        let a = &self.app;
        let otk = paykey::domain::OneTimeKey::parse(&key).map_err(|e| e.to_string())?;
        let done = flows::complete_checkout(&a.store, &a.keys, &a.users, &a.payments, a.ctx(), &id, Some(&otk))
            .await
            .map_err(|e| format!("fulfilment: {e}"))?;
        if !done.is_success() {
            return Err(format!("fulfilment: {done:?}"));
        }
        let sub = paykey::ports::Payments::get_checkout(&a.payments, &id)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|s| s.subscription)
            .ok_or("no subscription")?;
        Ok((u, sub.to_string()))
    }

    /// The event of one invocation of `flow`, its state made ready.
    async fn event(&self, flow: Flow) -> Result<String, String> {
        let claims = |u: &User| {
            let mut c = serde_json::Map::new();
            c.insert("sub".into(), json!(u.id.as_str()));
            c.insert("cognito:username".into(), json!(u.name.as_str()));
            c.insert("token_use".into(), json!("id"));
            c
        };
        let (method, path, body, claims, headers) = match flow {
            Flow::Checkout => {
                let u = self.user().await?;
                let h = vec![("content-type", "application/json".to_string())];
                (
                    Method::POST,
                    "/checkout-sessions".to_string(),
                    r#"{"lookup_key": "FMMailPro"}"#.to_string(),
                    Some(claims(&u)),
                    h,
                )
            }
            Flow::Redirect => {
                let (_, id, key) = self.paid().await?;
                (Method::GET, format!("/create-api-key/{id}/{key}"), String::new(), None, vec![])
            }
            Flow::Account => {
                let (u, _) = self.pro().await?;
                (Method::GET, "/account".to_string(), String::new(), Some(claims(&u)), vec![])
            }
            Flow::Webhook => {
                let (_, sub) = self.pro().await?;
                // A cancellation comes long after the purchase: the record is older than the
                // webhook's first read (within `UNCHANGED_MARGIN` it reads the subscription
                // again under the lock, one more Stripe call).
                tokio::time::sleep(flows::UNCHANGED_MARGIN + Duration::from_millis(100)).await;
                let req = Request::delete(format!("{}/v1/subscriptions/{sub}", self.stripe_base))
                    .header("authorization", format!("Bearer {STRIPE_KEY}"))
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                let r = self.http.request(req).await.map_err(|e| format!("cancelling: {e}"))?;
                let object: Value =
                    serde_json::from_slice(&r.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes())
                        .map_err(|e| e.to_string())?;
                let n = self.n.fetch_add(1, Ordering::SeqCst);
                let payload = json!({
                    "id": format!("evt_latency_{n}_{}", std::process::id()), "object": "event",
                    "type": "customer.subscription.deleted", "api_version": "2025-03-31.basil",
                    "created": chrono::Utc::now().timestamp(), "livemode": false,
                    "data": {"object": object},
                })
                .to_string();
                let sig = stripe_emulator::webhooks::signature_header(
                    &payload,
                    WEBHOOK_SECRET,
                    chrono::Utc::now().timestamp(),
                );
                let h = vec![("stripe-signature", sig), ("content-type", "application/json".to_string())];
                (Method::POST, "/stripe/webhook".to_string(), payload, None, h)
            }
        };
        let matched = paykey_local::gateway::route(&method, &path).ok_or(format!("no route for {path}"))?;
        let mut hm = axum::http::HeaderMap::new();
        for (k, v) in headers {
            hm.insert(k, v.parse().map_err(|_| "header")?);
        }
        let ev = paykey_local::gateway::event(
            &method,
            &path,
            None,
            &hm,
            &Bytes::from(body),
            &matched,
            claims,
            "api.paykey.test",
        );
        Ok(ev.to_string())
    }
}

/// One measured invocation.
struct Sample {
    ms: f64,
    connections: u64,
    requests: u64,
    /// (new connections, requests) per service, in `MODEL`'s order.
    per_service: Vec<(u64, u64)>,
}

struct Proxies(Vec<Proxy>);

/// (connections, requests) per proxy at one moment.
struct Counted(Vec<(u64, u64)>);

impl Proxies {
    fn totals(&self) -> Counted {
        Counted(
            self.0
                .iter()
                .map(|p| (p.counts.connections.load(Ordering::SeqCst), p.counts.requests.load(Ordering::SeqCst)))
                .collect(),
        )
    }
}

impl Counted {
    /// What happened between `before` and this.
    fn since(&self, before: &Counted, ms: f64) -> Sample {
        let per_service: Vec<(u64, u64)> = self.0.iter().zip(&before.0).map(|(a, b)| (a.0 - b.0, a.1 - b.1)).collect();
        Sample {
            ms,
            connections: per_service.iter().map(|c| c.0).sum(),
            requests: per_service.iter().map(|c| c.1).sum(),
            per_service,
        }
    }
}

fn status_of(outcome: &Outcome) -> Result<u16, String> {
    match outcome {
        Outcome::Response { body, .. } => serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["statusCode"].as_u64())
            .map(|s| s as u16)
            .ok_or_else(|| format!("not a proxy response: {body}")),
        Outcome::Error { body, .. } => Err(format!("the function reported an error: {body}")),
    }
}

/// One process: the first invocation cold, then `warm` more.
async fn run_process(
    w: &World,
    proxies: &Proxies,
    program: &Path,
    args: &[String],
    flow: Flow,
    warm: usize,
) -> Result<(Sample, Vec<Sample>), String> {
    let mut q = runtime_api::queue().await.map_err(|e| e.to_string())?;
    let ev = w.event(flow).await?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    let base = |i: usize| proxies.0[i].base.clone();
    let vars: Vec<(String, String)> = [
        ("AWS_LAMBDA_RUNTIME_API", q.addr.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", flow.binary().to_string()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_ENDPOINT_URL_DYNAMODB", base(0)),
        ("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", base(1)),
        ("AWS_ENDPOINT_URL_API_GATEWAY", base(2)),
        ("AWS_ENDPOINT_URL_SSM", base(3)),
        ("STRIPE_API_BASE", base(4)),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(w.env.iter().cloned())
    .collect();
    for (k, v) in &vars {
        cmd.env(k, v);
    }
    q.push(ev);
    let before = proxies.totals();
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", program.display()))?;
    let wait = Duration::from_secs(60);
    let fail = |what: String| async move { what };
    let (_, outcome) = match q.outcome(wait).await {
        Some(o) => o,
        None => {
            let _ = child.kill().await;
            let err = match child.stderr.take() {
                Some(mut e) => {
                    let mut s = String::new();
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut s).await;
                    s
                }
                None => String::new(),
            };
            return Err(fail(format!("{} gave no answer within 60 s: {err}", program.display())).await);
        }
    };
    let at = match &outcome {
        Outcome::Response { at, .. } | Outcome::Error { at, .. } => *at,
    };
    let status = status_of(&outcome)?;
    if status != flow.expected() {
        let _ = child.kill().await;
        return Err(format!(
            "{} {flow:?}: status {status}, expected {}: {outcome:?}",
            program.display(),
            flow.expected()
        ));
    }
    let cold = proxies.totals().since(&before, (at - started).as_secs_f64() * 1000.0);
    let mut warms = Vec::new();
    for _ in 0..warm {
        let ev = w.event(flow).await?;
        let before = proxies.totals();
        q.push(ev);
        let (handed, outcome) = q.outcome(wait).await.ok_or(format!("{} warm: no answer", program.display()))?;
        let at = match &outcome {
            Outcome::Response { at, .. } | Outcome::Error { at, .. } => *at,
        };
        let status = status_of(&outcome)?;
        if status != flow.expected() {
            let _ = child.kill().await;
            return Err(format!("{} {flow:?} warm: status {status}: {outcome:?}", program.display()));
        }
        warms.push(proxies.totals().since(&before, (at - handed).as_secs_f64() * 1000.0));
    }
    let _ = child.kill().await;
    Ok((cold, warms))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The section of BENCHMARKS.md: skipped (said so) without moto.
pub async fn section(
    moto: Option<&str>,
    bin_dir: &Path,
    python: &Path,
    runs: usize,
    warm: usize,
) -> Result<String, String> {
    let mut md = String::from("\n## What the user waits for: the latency model (issue 27)\n\n");
    let Some(moto) = moto else {
        md.push_str("Skipped: needs moto_server (`PAYKEY_MOTO_URL`), as the README's test command starts it.\n");
        return Ok(md);
    };
    let prefix = format!("paykey-lat-{}", &uuid_like());
    let w = world(moto, &prefix).await?;
    let mut proxies = Vec::new();
    for (i, s) in MODEL.iter().enumerate() {
        let upstream = if i == 4 { w.stripe_base.clone() } else { moto.trim_end_matches('/').to_string() };
        proxies.push(proxy(s, upstream, 1.0).await.map_err(|e| e.to_string())?);
    }
    let proxies = Proxies(proxies);
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/flows.py");
    md.push_str(&format!(
        "Each backend behind its own loopback proxy that holds every new connection for a handshake and every request for the service's time (figures below); the functions reach them through `AWS_ENDPOINT_URL_<SERVICE>` and `STRIPE_API_BASE`, their secrets in SSM (`STRIPE_API_KEY_PARAMETER`, `STRIPE_WEBHOOK_SECRET_PARAMETER`). Cold: exec → first answer posted to the Runtime API emulator (init, SSM, every first connection); warm: event handed out → answer, in the same process. {runs} processes per flow and target, each answering 1 cold and {warm} warm invocations; medians. Each invocation has its own user and state, prepared beforehand straight to moto and the emulator. The reference is `infra/bench/reference/flows.py` (boto3 + stripe; routes 1–2 the original Python design's calls in its order, 3–4 paykey's calls one after another). The proxies' waits are the model; moto (a Python server, a new loopback connection per request: it closes each one) and the emulator add their own few milliseconds per call, and each process its own work.\n\n"
    ));
    md.push_str("| service | per request | per new connection | source |\n|---|---|---|---|\n");
    let per_request = [
        "5 ms reads, 8 ms writes, 25 ms transactions",
        "50 ms, 70 ms AdminUpdateUserAttributes",
        "200 ms",
        "25 ms",
        "200 ms GET, 400 ms POST",
    ];
    for (s, r) in MODEL.iter().zip(per_request) {
        md.push_str(&format!("| {} | {r} | {} ms | {} |\n", s.name, s.handshake_ms, s.source));
    }
    md.push_str("\n| flow | paykey cold ms | reference cold ms | cold ratio | paykey warm ms | reference warm ms | warm ratio | paykey calls / new connections, cold | paykey calls / new connections, warm | reference calls / new connections, warm |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut bounds = String::new();
    for flow in Flow::ALL {
        let mut ours = (Vec::new(), Vec::new());
        let mut theirs = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (c, ws) = run_process(&w, &proxies, &bin_dir.join(flow.binary()), &[], flow, warm).await?;
            ours.0.push(c);
            ours.1.extend(ws);
            if python.is_file() {
                let args = vec![reference.display().to_string()];
                let (c, ws) = run_process(&w, &proxies, python, &args, flow, warm).await?;
                theirs.0.push(c);
                theirs.1.extend(ws);
            }
        }
        let m = |v: &Vec<Sample>| median(v.iter().map(|s| s.ms).collect());
        let calls = |v: &Vec<Sample>| {
            format!(
                "{:.0} / {:.0}",
                median(v.iter().map(|s| s.requests as f64).collect()),
                median(v.iter().map(|s| s.connections as f64).collect())
            )
        };
        let (pc, pw, rc, rw) = (m(&ours.0), m(&ours.1), m(&theirs.0), m(&theirs.1));
        md.push_str(&format!(
            "| {} | {pc:.0} | {rc:.0} | {:.2} | {pw:.0} | {rw:.0} | {:.2} | {} | {} | {} |\n",
            flow.label(),
            pc / rc,
            pw / rw,
            calls(&ours.0),
            calls(&ours.1),
            calls(&theirs.1),
        ));
        // Per service, cold: new connections, and whether it was called (its handshake counts
        // in the bound: warm + one handshake per host the cold invocation needed).
        let mut hosts = Vec::new();
        let mut bound = 0;
        for (i, service) in MODEL.iter().enumerate() {
            let conns = median(ours.0.iter().map(|s| s.per_service[i].0 as f64).collect());
            let used = median(ours.0.iter().map(|s| s.per_service[i].1 as f64).collect()) > 0.0;
            if used {
                bound += service.handshake_ms;
                hosts.push(format!("{} {conns:.0}", service.name));
            } else if conns > 0.0 {
                hosts.push(format!("{} {conns:.0} (not called)", service.name));
            }
        }
        let over = pc - pw;
        bounds.push_str(&format!(
            "| {} | {pc:.0} | {pw:.0} | {over:.0} | {bound} | {} | {} |\n",
            flow.label(),
            if over <= bound as f64 { "yes" } else { "no" },
            hosts.join(", "),
        ));
    }
    md.push_str("\n### Cold minus warm (paykey)\n\nThe bound is the issue's: one handshake for each host the cold invocation called (the model's figure per host). New connections counted per host, cold (medians; a host connected to early but not called is marked).\n\n| flow | cold ms | warm ms | cold − warm ms | bound ms | within | new connections per host, cold |\n|---|---|---|---|---|---|---|\n");
    md.push_str(&bounds);
    Ok(md)
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            % 0xffff_ffff
    )
}
