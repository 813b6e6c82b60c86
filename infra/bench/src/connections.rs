//! Connections a warm invocation opens: the Stripe adapter against the Stripe emulator behind
//! TLS on loopback (the test certificate, a 20 ms pause before each new connection is served,
//! standing in for a handshake across a network), and the AWS SDK clients against moto behind
//! a plain counting front. Connections are counted where the fronts accept them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use paykey::adapters::stripe::StripePayments;
use paykey::adapters::stripe_client::{ClientSettings, TrustRoots};
use paykey::config::{Secret, StripeConfig};
use paykey::domain::{SessionId, User, UserId, UserName};
use paykey::ports::{NewCheckout, Payments};
use stripe_emulator::front;

/// The pause before a new connection is served.
pub const HANDSHAKE_DELAY: Duration = Duration::from_millis(20);

struct Row {
    client: &'static str,
    first: usize,
    warm: Vec<usize>,
    first_ms: f64,
    warm_ms: Vec<f64>,
}

impl Row {
    fn new(client: &'static str) -> Self {
        Self { client, first: 0, warm: vec![], first_ms: 0.0, warm_ms: vec![] }
    }

    /// Invocation `i` opened `opened` connections and took `ms`.
    fn record(&mut self, i: usize, opened: usize, ms: f64) {
        if i == 0 {
            (self.first, self.first_ms) = (opened, ms);
        } else {
            self.warm.push(opened);
            self.warm_ms.push(ms);
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn stripe_over(tls: &front::Front, max_idle_per_host: usize) -> Result<StripePayments, String> {
    let cfg = StripeConfig {
        secret_key: Secret::new("sk_test_paykey_bench"),
        api_base: Some(format!("{}/", tls.url(true))),
        price_cache: Duration::ZERO,
    };
    let settings = ClientSettings {
        roots: TrustRoots::Only(vec![front::test_cert_der()]),
        max_idle_per_host,
        ..ClientSettings::default()
    };
    StripePayments::with_settings(&cfg, settings).map_err(|e| e.to_string())
}

/// A paid session on the emulator: what a success redirect verifies.
async fn paid_session(emu: &stripe_emulator::Running) -> Result<SessionId, String> {
    let direct = StripePayments::new(&StripeConfig {
        secret_key: Secret::new("sk_test_paykey_bench"),
        api_base: Some(format!("{}/", emu.base_url())),
        price_cache: Duration::ZERO,
    })
    .map_err(|e| e.to_string())?;
    let (_, product) = emu.shared.call("POST", "/v1/products", "name=PRO");
    let form = format!(
        "product={}&unit_amount=980&currency=jpy&recurring[interval]=month&lookup_key=FMMailPro",
        product["id"].as_str().unwrap_or_default()
    );
    let (_, price) = emu.shared.call("POST", "/v1/prices", &form);
    let user = User {
        id: UserId::parse("8f1c2d3e-0000-4000-8000-000000000001").map_err(|e| e.to_string())?,
        name: UserName::parse("bench").map_err(|e| e.to_string())?,
    };
    let created = direct
        .create_checkout(NewCheckout {
            price_id: price["id"].as_str().unwrap_or_default(),
            price_metered: false,
            overage_price_id: None,
            user: &user,
            customer: None,
            success_url: "https://app.example.com/ok".into(),
            cancel_url: "https://app.example.com/no".into(),
            idempotency_key: "paykey-bench-connections".into(),
            trial_days: 0,
        })
        .await
        .map_err(|e| e.to_string())?;
    emu.shared.pay(created.id.as_str()).ok_or("the emulator did not take the payment")?;
    Ok(created.id)
}

/// The Stripe calls of a success redirect's verification: the session, then its subscription.
async fn verify_once(stripe: &StripePayments, id: &SessionId) -> Result<(), String> {
    let session = stripe.get_checkout(id).await.map_err(|e| e.to_string())?.ok_or("session missing")?;
    let sub = session.subscription.ok_or("no subscription")?;
    stripe.get_subscription(&sub).await.map_err(|e| e.to_string())?.ok_or("subscription missing")?;
    Ok(())
}

async fn stripe_rows(invocations: usize) -> Result<Vec<Row>, String> {
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let id = paid_session(&emu).await?;
    let mut rows = Vec::new();
    for (client, idle) in
        [("async-stripe's client (pool_max_idle_per_host 0): reference", 0), ("paykey's pooled client", 8)]
    {
        let tls = front::start(emu.addr, true, HANDSHAKE_DELAY).await.map_err(|e| e.to_string())?;
        let stripe = stripe_over(&tls, idle)?;
        let mut row = Row::new(client);
        for i in 0..invocations {
            let before = tls.accepted();
            let t = Instant::now();
            verify_once(&stripe, &id).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let opened = tls.accepted() - before;
            row.record(i, opened, ms);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// DynamoDB and Cognito calls through one `SdkConfig` with the functions' HTTP client, as a
/// function makes them, against moto.
async fn aws_rows(moto: &str, invocations: usize) -> Result<Vec<Row>, String> {
    let upstream: SocketAddr = moto
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("PAYKEY_MOTO_URL {moto}: {e}"))?;
    let plain = front::start(upstream, false, HANDSHAKE_DELAY).await.map_err(|e| e.to_string())?;
    let http = paykey::adapters::https::AwsHttpClient::new(&Default::default()).map_err(|e| e.to_string())?;
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http.shared())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(plain.url(false))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::for_tests())
        .load()
        .await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let cognito = aws_sdk_cognitoidentityprovider::Client::new(&config);
    let mut row = Row::new("AWS SDK clients (DynamoDB + Cognito) on paykey's AwsHttpClient");
    for i in 0..invocations {
        let before = plain.accepted();
        let t = Instant::now();
        dynamo.list_tables().send().await.map_err(|e| format!("ListTables: {e:?}"))?;
        cognito.list_user_pools().max_results(1).send().await.map_err(|e| format!("ListUserPools: {e:?}"))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let opened = plain.accepted() - before;
        row.record(i, opened, ms);
    }
    Ok(vec![row])
}

/// The section of BENCHMARKS.md; the AWS rows only with `moto` (PAYKEY_MOTO_URL).
pub async fn warm_connections(invocations: usize, moto: Option<&str>) -> Result<String, String> {
    let mut md = format!(
        "\n## Connections per warm invocation\n\n{invocations} invocations in one container: the first, then the mean of the rest. Stripe: a success redirect's two Stripe calls (session, subscription) through the production adapter to the Stripe emulator behind TLS on loopback (test certificate, {} ms before each new connection is served, standing in for a handshake). AWS: one DynamoDB and one Cognito call against moto behind a plain counting front with the same pause; moto (Werkzeug) answers every request with `Connection: close`, so no client can reuse a connection to it (the AWS HTTP client's reuse is shown on a keep-alive server in `shared/src/adapters/https.rs`'s tests). On a current-thread runtime, as the functions run.\n\n| backend calls | client | new connections, first invocation | new connections per warm invocation | first ms | warm ms (median) |\n|---|---|---|---|---|---|\n",
        HANDSHAKE_DELAY.as_millis()
    );
    let mut rows: Vec<(&str, Row)> = stripe_rows(invocations).await?.into_iter().map(|r| ("Stripe (TLS)", r)).collect();
    match moto {
        Some(url) => rows.extend(aws_rows(url, invocations).await?.into_iter().map(|r| ("AWS on moto", r))),
        None => md.insert_str(0, "\n(PAYKEY_MOTO_URL unset: no AWS rows.)\n"),
    }
    for (backend, r) in rows {
        let warm = if r.warm.is_empty() { 0.0 } else { r.warm.iter().sum::<usize>() as f64 / r.warm.len() as f64 };
        md.push_str(&format!(
            "| {backend} | {} | {} | {warm:.2} | {:.1} | {:.1} |\n",
            r.client,
            r.first,
            r.first_ms,
            median(r.warm_ms)
        ));
    }
    Ok(md)
}
