//! paykey on one loopback port, offline: the Lambda handlers behind an API Gateway
//! emulation (`/api/…`), the Stripe emulator (`/stripe/…`), a local Cognito (`/cognito/…`),
//! a product API guarded by the issued keys (`/product/hello`), and a page that walks the
//! upgrade flow (`/`). Stores persist under a data folder.

pub mod aws;
pub mod cognito;
pub mod gateway;
pub mod persist;
pub mod provision;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use paykey::adapters::memory::{MemoryKeys, MemoryStore, Meter};
use paykey::adapters::stripe::StripePayments;
use paykey::config::{Secret, StripeConfig};
use paykey::flows::Settings;
use paykey::handlers::{self, App};
use paykey::ports::{RandomIds, SystemClock};
use serde_json::{json, Value};

use cognito::LocalCognito;
use gateway::Function;

pub type LocalApp = App<MemoryStore, MemoryKeys, LocalCognito, StripePayments>;

/// The handlers on the production AWS adapters (`PAYKEY_BACKEND=aws`).
pub type AwsApp = App<
    paykey::adapters::aws::DynamoStore,
    paykey::adapters::patient::Patient<paykey::adapters::aws::ApiGatewayKeys>,
    paykey::adapters::aws::CognitoUsers,
    StripePayments,
>;

/// The stack's AWS side and the handlers on it.
pub struct AwsBackend {
    pub stack: aws::AwsStack,
    pub app: AwsApp,
}

/// How to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Loopback port (0: any free one).
    pub port: u16,
    pub data_dir: PathBuf,
    /// `sk_test_…`: talk to Stripe test mode instead of the emulator.
    pub stripe_api_key: Option<String>,
    /// With real Stripe: the signing secret of the endpoint forwarding webhooks here.
    pub stripe_webhook_secret: Option<String>,
    /// With real Stripe: paykey's portal configuration (`bpc_…`, printed by `paykey-setup`).
    pub stripe_portal_configuration: Option<String>,
    /// Emulator webhook retry delay (first backoff).
    pub webhook_retry_delay: std::time::Duration,
    /// What is sold (`PAYKEY_CATALOG`'s JSON); `None`: [`LOCAL_CATALOG`].
    pub catalog: Option<String>,
    /// When the data file is written (`PAYKEY_PERSIST`).
    pub persist: persist::Mode,
    /// The front end's production build (`infra/web/dist`); `None`: the built-in page.
    pub web_dir: Option<PathBuf>,
    /// Run on the production AWS adapters instead of the embedded stores and Cognito.
    pub aws: Option<aws::AwsOptions>,
    /// How often rotated-out keys whose grace ended are disabled (`PAYKEY_SWEEP_SECONDS`;
    /// `None`: never, for tests that need the stores to change only on requests).
    pub sweep_every: Option<std::time::Duration>,
    /// The product's name in the front end's `/config.json` (`PAYKEY_PRODUCT_NAME`).
    pub product_name: String,
    /// Other front-end origins allowed by CORS (`ALLOWED_ORIGINS`, as the functions read it).
    pub allowed_origins: Vec<String>,
}

/// The local stack's catalog: FREE with a key (1,000 requests a month), PRO (`FMMailPro`,
/// ¥980) and BUSINESS (`FMMailBusiness`, ¥4,980), each on its own usage plan; no trial.
pub const LOCAL_CATALOG: &str = r#"{"tiers": [
    {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 1000, "period": "MONTH"},
     "throttle": {"rate": 1, "burst": 5}},
    {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro",
     "quota": {"limit": 100000, "period": "MONTH"}, "throttle": {"rate": 10, "burst": 20}},
    {"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "usage-plan-business",
     "quota": {"limit": 1000000, "period": "MONTH"}, "throttle": {"rate": 50, "burst": 100}}
]}"#;

/// What the local stack's metered prices charge per call beyond the included amount: ¥0.5.
pub const LOCAL_RATE: &str = "0.5";

/// The React front end's build in this checkout.
pub const DEFAULT_WEB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../web/dist");

impl Default for Options {
    fn default() -> Self {
        Self {
            port: 8787,
            data_dir: PathBuf::from(".paykey-data"),
            stripe_api_key: None,
            stripe_webhook_secret: None,
            stripe_portal_configuration: None,
            webhook_retry_delay: std::time::Duration::from_millis(500),
            catalog: None,
            persist: persist::Mode::default(),
            sweep_every: Some(std::time::Duration::from_secs(1)),
            web_dir: Some(PathBuf::from(DEFAULT_WEB_DIR)),
            aws: None,
            product_name: "FMMail".into(),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Data(#[from] persist::PersistError),
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

pub struct LocalState {
    /// The embedded stores and Cognito (unused, and empty, when `aws` is set).
    pub app: LocalApp,
    /// The AWS backend, when the stack runs on it: routes, sign-up and sign-in use it.
    pub aws: Option<AwsBackend>,
    /// The front end served at `/`: the React build, or `None` for the built-in page.
    pub web: Option<web::Build>,
    pub cognito: LocalCognito,
    /// The front end's `/config.json`.
    pub web_config: Value,
    pub emulator: Option<stripe_emulator::Shared>,
    pub data_dir: PathBuf,
    webhook_secret: String,
    save_lock: Mutex<()>,
    persist: persist::Mode,
    /// Group commit: tickets handed out, and the highest ticket whose changes are on disk.
    requested: AtomicU64,
    durable: watch::Sender<u64>,
    wake: Notify,
}

impl LocalState {
    fn snapshot(&self) -> persist::Snapshot {
        persist::Snapshot {
            version: 1,
            sessions: self.app.store.sessions(),
            accounts: self.app.store.accounts(),
            events: self.app.store.event_entries(),
            keys: self.app.keys.export(),
            cognito: self.cognito.snapshot(),
            stripe: self
                .emulator
                .as_ref()
                .map(|e| serde_json::value::RawValue::from_string(e.export_json()).expect("the emulator writes JSON")),
            webhook_secret: self.webhook_secret.clone(),
            usage_cursor: self.app.store.usage_cursor(),
        }
    }

    /// Writes every store to the data folder.
    pub fn save(&self) -> Result<(), persist::PersistError> {
        let _guard = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        persist::save(&self.data_dir, &self.snapshot())
    }

    /// Returns once everything changed before the call is in the data file (a write error is
    /// logged: the stack keeps serving from memory).
    pub async fn commit(self: &Arc<Self>) {
        match self.persist {
            persist::Mode::EveryRequest => {
                if let Err(e) = self.save() {
                    tracing::error!(error = %e, "could not save the local stack's data");
                }
            }
            persist::Mode::Group => {
                let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
                let mut durable = self.durable.subscribe();
                self.wake.notify_one();
                let _ = durable.wait_for(|d| *d >= ticket).await;
            }
        }
    }

    /// The group-commit writer: each write covers every ticket handed out before it began.
    async fn writer(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            let covered = self.requested.load(Ordering::SeqCst);
            let state = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || state.save()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "could not save the local stack's data"),
                Err(e) => tracing::error!(error = %e, "the data file writer panicked"),
            }
            self.durable.send_replace(covered);
        }
    }
}

/// A running local stack.
pub struct Started {
    pub addr: SocketAddr,
    pub state: Arc<LocalState>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Started {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn webhook_secret(&self) -> &str {
        &self.state.webhook_secret
    }
}

pub async fn start(opts: Options) -> Result<Started, StartError> {
    let catalog = paykey::domain::Catalog::parse(opts.catalog.as_deref().unwrap_or(LOCAL_CATALOG))
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let snapshot = persist::load(&opts.data_dir)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], opts.port)))
        .await
        .map_err(|source| StartError::Bind { port: opts.port, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { port: opts.port, source })?;
    let base = format!("http://{addr}");

    let issuer_base = format!("{base}/cognito");
    let cognito = match &snapshot {
        Some(s) => LocalCognito::restore(&issuer_base, s.cognito.clone()),
        None => LocalCognito::create(&issuer_base),
    }
    .map_err(StartError::Setup)?;

    let real_stripe = opts.stripe_api_key.as_deref().filter(|k| k.starts_with("sk_test_") || k.starts_with("rk_test_"));
    let (emulator, stripe_cfg, webhook_secret, portal_configuration) = match real_stripe {
        Some(key) => {
            let cfg = StripeConfig {
                secret_key: Secret::new(key),
                api_base: None,
                price_cache: std::time::Duration::from_secs(300),
            };
            let portal = opts.stripe_portal_configuration.clone().ok_or_else(|| {
                StartError::Setup(
                    "with STRIPE_API_KEY, set STRIPE_PORTAL_CONFIGURATION to the portal configuration paykey-setup printed".into(),
                )
            })?;
            (None, cfg, opts.stripe_webhook_secret.clone().unwrap_or_default(), portal)
        }
        None => {
            let secret = snapshot
                .as_ref()
                .map(|s| s.webhook_secret.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("whsec_{}", uuid::Uuid::new_v4().simple()));
            let config = stripe_emulator::Config {
                webhook_url: Some(format!("{base}/api/stripe/webhook")),
                webhook_secret: secret.clone(),
                retry_delay: opts.webhook_retry_delay,
                ..Default::default()
            };
            let shared = stripe_emulator::Shared::new(config);
            shared.set_base(&format!("{base}/stripe"));
            if let Some(v) = snapshot.as_ref().and_then(|s| s.stripe.as_ref()) {
                serde_json::from_str(v.get())
                    .map_err(|e| e.to_string())
                    .and_then(|v| shared.import(&v))
                    .map_err(|e| StartError::Setup(format!("the data file's Stripe state is corrupt: {e}")))?;
            }
            let portal = seed_catalog(&shared, &catalog);
            let cfg = StripeConfig {
                secret_key: Secret::new("sk_test_paykey_local"),
                api_base: Some(format!("{base}/stripe/")),
                price_cache: std::time::Duration::from_secs(300),
            };
            (Some(shared), cfg, secret, portal)
        }
    };
    let payments = StripePayments::new(&stripe_cfg).map_err(|e| StartError::Setup(e.to_string()))?;

    let meter = Meter::new();
    let store = MemoryStore::new(meter.clone());
    let keys = MemoryKeys::new(meter);
    if let Some(s) = snapshot {
        store.restore(s.sessions, s.accounts, s.events);
        store.restore_usage_cursor(s.usage_cursor);
        keys.restore(s.keys);
    }
    // One test clock for the stack: with the emulator, paykey's flows and the product API's
    // daily counts run on the emulator's clock, which `/stripe/_emulator/advance` moves (a
    // month later for Stripe is a month later for the quota periods and the usage report).
    // Sign-in tokens stay on the wall clock.
    let clock: Arc<dyn paykey::ports::Clock> = match &emulator {
        Some(e) => Arc::new(EmulatorClock(e.clone())),
        None => Arc::new(SystemClock),
    };
    keys.use_clock(clock.clone());
    let mut settings = Settings::new(base.clone(), format!("{base}/api"));
    // The product API enforces each tier's quota and throttle as API Gateway would.
    keys.define_catalog(&catalog);
    settings.catalog = catalog;
    settings.webhook_secrets = webhook_secret.split(',').filter(|s| !s.is_empty()).map(Secret::new).collect();
    settings.portal_configuration = Some(portal_configuration);
    settings.allowed_origins = opts.allowed_origins.clone();
    let app = App { store, keys, users: cognito.clone(), payments, clock, ids: Arc::new(RandomIds), settings };
    let aws = match &opts.aws {
        None => None,
        Some(o) => {
            let stack = aws::AwsStack::connect(o, &app.settings.catalog).await.map_err(StartError::Setup)?;
            let mut settings = app.settings.clone();
            settings.catalog = stack.catalog.clone();
            let app = App {
                store: stack.store(),
                keys: stack.keys(),
                users: stack.users(),
                payments: app.payments.clone(),
                clock: Arc::new(SystemClock),
                ids: Arc::new(RandomIds),
                settings,
            };
            Some(AwsBackend { stack, app })
        }
    };
    let web = match &opts.web_dir {
        Some(dir) => web::Build::load(dir)
            .map_err(|e| StartError::Setup(format!("cannot read the front end's build in {}: {e}", dir.display())))?,
        None => None,
    };
    // The front end's run-time configuration: on the AWS backend the app signs up and in at the
    // user pool itself, as it does against a deployed stack.
    let mut web_config = json!({"apiUrl": "/api", "productName": opts.product_name, "productUrl": "/product/hello"});
    match &aws {
        None => web_config["localCognito"] = json!(true),
        Some(a) => {
            web_config["userPoolId"] = json!(a.stack.resources.user_pool_id);
            web_config["userPoolClientId"] = json!(a.stack.resources.client_id);
        }
    }
    let state = Arc::new(LocalState {
        web,
        web_config,
        aws,
        app,
        cognito,
        emulator: emulator.clone(),
        data_dir: opts.data_dir.clone(),
        webhook_secret,
        save_lock: Mutex::new(()),
        persist: opts.persist,
        requested: AtomicU64::new(0),
        durable: watch::channel(0).0,
        wake: Notify::new(),
    });
    state.save()?;
    tokio::spawn(state.clone().writer());
    // webhooks owed before a restart (the data file keeps them until answered 2xx)
    if let Some(e) = &state.emulator {
        e.resume_deliveries();
    }

    let mut router = Router::new()
        .route("/api/{*rest}", any(api))
        .route("/cognito/sign-up", post(sign_up))
        .route("/cognito/sign-in", post(sign_in))
        .route("/cognito/refresh", post(refresh))
        .route("/cognito/local_paykey/.well-known/jwks.json", get(jwks))
        .route("/product/hello", get(product_api))
        .route("/openapi.json", get(openapi))
        .route("/config.json", get(serve_web_config))
        .route("/", get(page))
        .route("/thanks_upgrade", get(page))
        .route("/canceled_upgrade", get(page))
        .route("/account", get(page))
        .route("/assets/{file}", get(asset))
        .with_state(state.clone());
    if let Some(e) = emulator {
        router = router.nest("/stripe", e.router());
    }
    let router = router.layer(middleware::from_fn_with_state(state.clone(), persist_after));
    // What a schedule does on AWS: rotated-out keys are disabled when their grace ends.
    let sweeper = state.clone();
    let sweep_every = opts.sweep_every;
    tokio::spawn(async move {
        let Some(every) = sweep_every else { return };
        // The usage report runs once an hour of the (test) clock, as the deployed schedule does.
        let mut reported_hour = None;
        loop {
            tokio::time::sleep(every).await;
            let hour = sweeper.app.clock.now().timestamp() / 3600;
            let hourly = reported_hour != Some(hour);
            let swept = match &sweeper.aws {
                Some(a) => {
                    let app = &a.app;
                    let swept = paykey::flows::sweep_expired_keys(&app.store, &app.keys, app.ctx()).await;
                    let comps = paykey::flows::end_expired_comps(&app.store, &app.keys, &app.users, app.ctx()).await;
                    let usage = match hourly {
                        true => report_usage(&app.store, &app.keys, &app.payments, app.ctx()).await,
                        false => Ok(0),
                    };
                    swept.and_then(|s| comps.map(|c| s.len() + c.len())).and_then(|n| usage.map(|u| n + u))
                }
                None => {
                    let app = &sweeper.app;
                    let swept = paykey::flows::sweep_expired_keys(&app.store, &app.keys, app.ctx()).await;
                    let comps = paykey::flows::end_expired_comps(&app.store, &app.keys, &app.users, app.ctx()).await;
                    let usage = match hourly {
                        true => report_usage(&app.store, &app.keys, &app.payments, app.ctx()).await,
                        false => Ok(0),
                    };
                    swept.and_then(|s| comps.map(|c| s.len() + c.len())).and_then(|n| usage.map(|u| n + u))
                }
            };
            if swept.is_ok() && hourly {
                reported_hour = Some(hour);
            }
            match swept {
                Ok(done) if done > 0 => sweeper.commit().await,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "key sweep failed; retried in a second"),
            }
        }
    });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "local stack stopped");
        }
    });
    Ok(Started { addr, state, task })
}

/// The emulator's test clock: the wall clock plus the time `/_emulator/advance` added.
struct EmulatorClock(stripe_emulator::Shared);

impl paykey::ports::Clock for EmulatorClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::Duration::seconds(self.0.clock_offset())
    }
}

/// What the sweep function does on the hour: the metered tiers' usage to Stripe's meter (here
/// on every sweep). Returns the events sent (a change worth saving: the cursor).
async fn report_usage<S, K, M>(
    store: &S,
    keys: &K,
    meter: &M,
    ctx: paykey::flows::Ctx<'_>,
) -> Result<usize, paykey::Error>
where
    S: paykey::ports::AccountListing + paykey::ports::metering::UsageCursor + paykey::ports::ProcessedEvents,
    K: paykey::ports::KeyRegistry,
    M: paykey::ports::metering::UsageMeter,
{
    if ctx.settings.catalog.metered().next().is_none() {
        return Ok(0);
    }
    let accounts = store.list_accounts().await?;
    let r = paykey::flows::metering::report_usage(keys, meter, store, ctx, &accounts).await?;
    let alerts = paykey::flows::metering::announce_thresholds(store, keys, ctx, &accounts).await?;
    Ok(r.events + r.days.len() + alerts.len())
}

/// The paid tiers' products and monthly prices (PRO ¥980 `FMMailPro`, BUSINESS ¥4,980
/// `FMMailBusiness`) and a portal configuration that lets customers switch between them and
/// cancel, in a new emulator (what `paykey-setup` does on Stripe); returns the configuration's
/// id. Like a real account whose portal settings were never saved, the emulator then has no
/// default configuration: every portal session names this one.
///
/// A catalog's other tiers get a product and a ¥1,980 monthly price; its metered tiers a
/// graduated price on the meter (made if missing) at [`LOCAL_RATE`] per call beyond the included
/// amount (a pay-per-call tier: that price alone), as `paykey-setup --metered` makes them.
fn seed_catalog(shared: &stripe_emulator::Shared, catalog: &paykey::domain::Catalog) -> String {
    let mut offered = Vec::new();
    let mut flat: Vec<(String, String, i64)> =
        vec![("PRO".into(), "FMMailPro".into(), 980), ("BUSINESS".into(), "FMMailBusiness".into(), 4980)];
    for t in catalog.paid() {
        let key = t.lookup_key.as_ref().map(|k| k.to_string()).unwrap_or_default();
        if !t.pay_per_call() && !flat.iter().any(|(_, k, _)| *k == key) {
            flat.push((t.name.to_string(), key, 1980));
        }
    }
    for (name, lookup_key, amount) in flat.iter().map(|(n, k, a)| (n.as_str(), k.as_str(), *a)) {
        let (_, prices) = shared.call("GET", "/v1/prices", &format!("lookup_keys[0]={lookup_key}"));
        let existing = prices["data"].as_array().and_then(|d| d.first()).cloned();
        let price = match existing {
            Some(p) => p,
            None => {
                let (_, product) = shared.call("POST", "/v1/products", &format!("name=FMMail+{name}"));
                let form = format!(
                    "product={}&unit_amount={amount}&currency=jpy&recurring[interval]=month&lookup_key={lookup_key}&nickname={name}+monthly",
                    product["id"].as_str().unwrap_or_default()
                );
                shared.call("POST", "/v1/prices", &form).1
            }
        };
        offered.push((
            price["product"].as_str().unwrap_or_default().to_string(),
            price["id"].as_str().unwrap_or_default().to_string(),
        ));
    }
    for t in catalog.metered() {
        let m = t.metered.as_ref().expect("a metered tier");
        let (_, prices) = shared.call("GET", "/v1/prices", &format!("lookup_keys[0]={}", m.lookup_key));
        if prices["data"].as_array().is_some_and(|d| !d.is_empty()) {
            continue;
        }
        let (_, meters) = shared.call("GET", "/v1/billing/meters", "");
        let event = catalog.meter_event_name();
        let meter = match meters["data"].as_array().and_then(|d| d.iter().find(|m| m["event_name"] == event)) {
            Some(m) => m["id"].as_str().unwrap_or_default().to_string(),
            None => shared
                .call(
                    "POST",
                    "/v1/billing/meters",
                    &format!("display_name=API+requests&event_name={event}&default_aggregation[formula]=sum&event_time_window=day"),
                )
                .1["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        // the tier's product (a pay-per-call tier's is made here)
        let product = match flat.iter().any(|(_, k, _)| Some(k.as_str()) == t.lookup_key.as_ref().map(|k| k.as_str())) {
            true => {
                let (_, p) = shared.call(
                    "GET",
                    "/v1/prices",
                    &format!("lookup_keys[0]={}", t.lookup_key.as_ref().expect("paid")),
                );
                p["data"][0]["product"].as_str().unwrap_or_default().to_string()
            }
            false => shared.call("POST", "/v1/products", &format!("name=FMMail+{}", t.name)).1["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        let mut form = format!(
            "product={product}&currency=jpy&recurring[interval]=month&recurring[usage_type]=metered&recurring[meter]={meter}&billing_scheme=tiered&tiers_mode=graduated&lookup_key={}&nickname={}+calls",
            m.lookup_key, t.name
        );
        let mut i = 0;
        if m.included > 0 {
            form.push_str(&format!("&tiers[0][up_to]={}&tiers[0][unit_amount_decimal]=0", m.included));
            i = 1;
        }
        form.push_str(&format!("&tiers[{i}][up_to]=inf&tiers[{i}][unit_amount_decimal]={LOCAL_RATE}"));
        let price = shared.call("POST", "/v1/prices", &form).1;
        if t.pay_per_call() {
            offered.push((product, price["id"].as_str().unwrap_or_default().to_string()));
        }
    }
    let (_, configs) = shared.call("GET", "/v1/billing_portal/configurations", "");
    if let Some(c) = configs["data"].as_array().and_then(|d| d.iter().find(|c| c["metadata"]["paykey"] == "true")) {
        return c["id"].as_str().unwrap_or_default().to_string();
    }
    let mut form = String::from(
        "features[subscription_cancel][enabled]=true&features[invoice_history][enabled]=true&features[subscription_update][enabled]=true&features[subscription_update][proration_behavior]=always_invoice&features[subscription_update][default_allowed_updates][0]=price",
    );
    for (i, (product, price)) in offered.iter().enumerate() {
        form.push_str(&format!(
            "&features[subscription_update][products][{i}][product]={product}&features[subscription_update][products][{i}][prices][0]={price}"
        ));
    }
    form.push_str("&metadata[paykey]=true");
    shared.call("POST", "/v1/billing_portal/configurations", &form).1["id"].as_str().unwrap_or_default().to_string()
}

/// Answers a request only once what it changed is in the data file. Pages, the JWKS and
/// sign-in change nothing and skip the wait.
async fn persist_after(State(state): State<Arc<LocalState>>, req: Request, next: Next) -> Response {
    // sign-in and refresh read the pool and sign tokens: nothing to write
    let read_only = (req.method() == Method::GET && is_static(req.uri().path()))
        || (req.method() == Method::POST && matches!(req.uri().path(), "/cognito/sign-in" | "/cognito/refresh"));
    let resp = next.run(req).await;
    if !read_only {
        state.commit().await;
    }
    resp
}

fn is_static(path: &str) -> bool {
    matches!(
        path,
        "/" | "/thanks_upgrade"
            | "/canceled_upgrade"
            | "/account"
            | "/openapi.json"
            | "/config.json"
            | "/cognito/local_paykey/.well-known/jwks.json"
    ) || path.starts_with("/assets/")
}

async fn api(
    State(state): State<Arc<LocalState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().strip_prefix("/api").unwrap_or("/").to_string();
    let Some(matched) = gateway::route(&method, &path) else {
        return gateway::gateway_error(StatusCode::FORBIDDEN, "Missing Authentication Token");
    };
    let claims = if matched.auth {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return gateway::gateway_error(StatusCode::UNAUTHORIZED, "Unauthorized");
        };
        let c = &state.cognito;
        let now = chrono::Utc::now().timestamp();
        let verified = match &state.aws {
            Some(a) => a.stack.verify(&token, now),
            None => cognito::verify_id_token(&token, &c.jwks(), &c.client_id(), c.issuer(), now),
        };
        match verified {
            Ok(claims) => Some(claims),
            Err(e) => {
                tracing::info!(reason = %e, "token refused by the authorizer");
                return gateway::gateway_error(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
        }
    } else {
        None
    };
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1").to_string();
    let ev = gateway::event(&method, &path, uri.query(), &headers, &body, &matched, claims, &host);
    let req = match lambda_http::request::from_str(&ev.to_string()) {
        Ok(r) => r,
        Err(e) => return gateway::gateway_error(StatusCode::BAD_GATEWAY, &format!("could not build the event: {e}")),
    };
    match &state.aws {
        Some(a) => dispatch(&a.app, matched.function, req).await,
        None => dispatch(&state.app, matched.function, req).await,
    }
}

/// The function behind the route, on either backend.
async fn dispatch<S, K, U, P>(app: &App<S, K, U, P>, function: Function, req: lambda_http::Request) -> Response
where
    S: paykey::ports::Checkouts
        + paykey::ports::Accounts
        + paykey::ports::OpenCheckouts
        + paykey::ports::Budgets
        + paykey::ports::ProcessedEvents
        + paykey::ports::metering::UsageCursor,
    K: paykey::ports::KeyRegistry,
    U: paykey::ports::UserDirectory,
    P: paykey::ports::Payments + paykey::ports::metering::UsageMeter,
{
    let resp = match function {
        Function::CreateCheckoutSession => handlers::checkout_routes(app, req).await,
        Function::CreateApiKey => handlers::create_api_key(app, req).await,
        Function::CreateBillingPortal => handlers::create_billing_portal(app, req).await,
        Function::GetAccount => handlers::get_account(app, req).await,
        Function::StripeWebhook => handlers::stripe_webhook(app, req).await,
    };
    match resp {
        Ok(r) => gateway::into_http(r),
        Err(never) => match never {},
    }
}

#[derive(serde::Deserialize)]
struct Credentials {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
}

fn auth_error(status: StatusCode, kind: &str, e: &dyn std::fmt::Display) -> Response {
    (status, Json(json!({"__type": kind, "message": e.to_string()}))).into_response()
}

async fn sign_up(State(state): State<Arc<LocalState>>, Json(c): Json<Credentials>) -> Response {
    if let Some(a) = &state.aws {
        return match a.stack.sign_up(&c.username, &c.password, c.email.as_deref()).await {
            Ok(()) => Json(json!({"UserConfirmed": true, "username": c.username})).into_response(),
            Err((kind, message)) => auth_error(StatusCode::BAD_REQUEST, &kind, &message),
        };
    }
    // PBKDF2 is CPU work: on the blocking pool, not on the threads that serve other requests
    let cognito = state.cognito.clone();
    let (name, password, email) = (c.username.clone(), c.password.clone(), c.email.clone());
    let done = tokio::task::spawn_blocking(move || cognito.sign_up(&name, &password, email.as_deref())).await;
    let Ok(done) = done else {
        return auth_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalErrorException", &"sign-up failed");
    };
    match done {
        Ok(()) => Json(json!({"UserConfirmed": true, "username": c.username})).into_response(),
        Err(e @ cognito::AuthError::UsernameExists) => {
            auth_error(StatusCode::BAD_REQUEST, "UsernameExistsException", &e)
        }
        Err(e) => auth_error(StatusCode::BAD_REQUEST, "InvalidParameterException", &e),
    }
}

async fn sign_in(State(state): State<Arc<LocalState>>, Json(c): Json<Credentials>) -> Response {
    if let Some(a) = &state.aws {
        return match a.stack.sign_in(&c.username, &c.password).await {
            Ok(t) => Json(json!({"AuthenticationResult": {"IdToken": t.id_token, "RefreshToken": t.refresh_token, "ExpiresIn": t.expires_in, "TokenType": "Bearer"}}))
                .into_response(),
            Err((kind, message)) => auth_error(StatusCode::BAD_REQUEST, &kind, &message),
        };
    }
    let cognito = state.cognito.clone();
    let (name, password) = (c.username.clone(), c.password.clone());
    let done =
        tokio::task::spawn_blocking(move || cognito.sign_in(&name, &password, chrono::Utc::now().timestamp())).await;
    let Ok(done) = done else {
        return auth_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalErrorException", &"sign-in failed");
    };
    match done {
        Ok(t) => Json(json!({"AuthenticationResult": {"IdToken": t.id_token, "RefreshToken": t.refresh_token, "ExpiresIn": cognito::TOKEN_LIFETIME_SECS, "TokenType": "Bearer"}})).into_response(),
        Err(e) => auth_error(StatusCode::BAD_REQUEST, "NotAuthorizedException", &e),
    }
}

#[derive(serde::Deserialize)]
struct Refresh {
    refresh_token: String,
}

/// `REFRESH_TOKEN_AUTH`: a new ID token (the attributes as they are now) for a refresh token.
async fn refresh(State(state): State<Arc<LocalState>>, Json(r): Json<Refresh>) -> Response {
    if let Some(a) = &state.aws {
        return match a.stack.refresh(&r.refresh_token).await {
            Ok((t, expires)) => {
                Json(json!({"AuthenticationResult": {"IdToken": t, "ExpiresIn": expires, "TokenType": "Bearer"}}))
                    .into_response()
            }
            Err((kind, message)) => auth_error(StatusCode::BAD_REQUEST, &kind, &message),
        };
    }
    match state.cognito.refresh(&r.refresh_token, chrono::Utc::now().timestamp()) {
        Ok(t) => Json(json!({"AuthenticationResult": {"IdToken": t, "ExpiresIn": cognito::TOKEN_LIFETIME_SECS, "TokenType": "Bearer"}})).into_response(),
        Err(e) => auth_error(StatusCode::BAD_REQUEST, "NotAuthorizedException", &e),
    }
}

async fn jwks(State(state): State<Arc<LocalState>>) -> Json<Value> {
    Json(state.cognito.jwks())
}

/// The API being sold, metered as API Gateway meters it: a request needs an enabled key that is
/// in a usage plan (else 403 `Forbidden`), within the plan's throttle (else 429 `Too Many
/// Requests`) and quota for the UTC period (else 429 `Limit Exceeded`); each served request
/// counts. The answer says which tier's plan served it.
async fn product_api(State(state): State<Arc<LocalState>>, headers: HeaderMap) -> Response {
    if state.aws.is_some() {
        // API Gateway meters the real product API; the AWS backend has no local meter
        return gateway::gateway_error(
            StatusCode::NOT_IMPLEMENTED,
            "the product API is API Gateway's on the AWS backend: call your stage with x-api-key",
        );
    }
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    match state.app.keys.call(key, state.app.clock.now()) {
        Ok((_, plan)) => {
            let tier = state
                .app
                .settings
                .catalog
                .tiers()
                .iter()
                .find(|t| t.usage_plan_id.as_deref() == Some(plan.as_str()))
                .map(|t| t.name.to_string());
            Json(json!({"message": "Hello from the API", "usage_plan": plan, "tier": tier})).into_response()
        }
        Err(refused) => gateway::gateway_error(
            StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::FORBIDDEN),
            refused.message(),
        ),
    }
}

/// paykey's OpenAPI document, its server this stack's `/api`.
async fn openapi(State(state): State<Arc<LocalState>>, headers: HeaderMap) -> Response {
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1");
    let keys: Vec<String> = state
        .app
        .settings
        .catalog
        .tiers()
        .iter()
        .filter_map(|t| t.lookup_key.as_ref().map(|k| k.to_string()))
        .collect();
    let mut resp = Json(gateway::openapi_for(&format!("http://{host}"), &keys)).into_response();
    resp.headers_mut().insert("access-control-allow-origin", axum::http::HeaderValue::from_static("*"));
    resp
}

/// The front end's run-time configuration (infra/web/src/config.ts reads it).
async fn serve_web_config(State(state): State<Arc<LocalState>>) -> Response {
    ([("cache-control", "no-cache")], Json(state.web_config.clone())).into_response()
}

async fn page(State(state): State<Arc<LocalState>>) -> Response {
    match state.web.as_ref().and_then(|w| w.get("/index.html")) {
        Some((mime, bytes)) => {
            ([("content-type", mime), ("cache-control", "no-cache")], bytes.to_vec()).into_response()
        }
        None => Html(web::PAGE).into_response(),
    }
}

async fn asset(State(state): State<Arc<LocalState>>, uri: Uri) -> Response {
    match state.web.as_ref().and_then(|w| w.get(uri.path())) {
        // file names carry a content hash: cacheable for good
        Some((mime, bytes)) => {
            ([("content-type", mime), ("cache-control", "public, max-age=31536000, immutable")], bytes.to_vec())
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
