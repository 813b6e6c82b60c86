//! The local stack under load: `N` concurrent sign-up → sign-in → checkout → pay → success
//! redirect journeys against a `paykey-local` binary on a fresh data folder, each journey
//! timed from its first request to the redirect. Several configurations (environment
//! variables for the binary) run one after the other in the same run, so a reference and
//! the default are measured side by side.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// One configuration's result.
pub struct Run {
    pub label: String,
    /// Each journey's wall time, seconds, sorted.
    pub journeys: Vec<f64>,
    /// First request → last redirect, seconds.
    pub total: f64,
    /// Size of `state.json` after the run, bytes.
    pub data_file: u64,
}

impl Run {
    pub fn median(&self) -> f64 {
        let v = &self.journeys;
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

struct Resp {
    status: u16,
    location: Option<String>,
    body: String,
}

async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: String) -> Result<Resp, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp { status, location, body: String::from_utf8_lossy(&bytes).into_owned() })
}

fn expect(r: Resp, status: u16, what: &str) -> Result<Resp, String> {
    if r.status == status {
        Ok(r)
    } else {
        Err(format!("{what}: {} {}", r.status, r.body))
    }
}

async fn journey(base: String, user: String) -> Result<f64, String> {
    let started = Instant::now();
    let creds = json!({"username": user, "password": "correct horse"}).to_string();
    let json_ct = [("content-type", "application/json")];
    expect(call("POST", &format!("{base}/cognito/sign-up"), &json_ct, creds.clone()).await?, 200, "sign-up")?;
    let r = expect(call("POST", &format!("{base}/cognito/sign-in"), &json_ct, creds).await?, 200, "sign-in")?;
    let v: Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    let token = v["AuthenticationResult"]["IdToken"].as_str().ok_or("no IdToken")?.to_string();
    let r = call(
        "POST",
        &format!("{base}/api/checkout-sessions"),
        &[("authorization", &token), ("content-type", "application/json")],
        json!({"lookup_key": "FMMailPro"}).to_string(),
    )
    .await?;
    let r = expect(r, 200, "checkout")?;
    let v: Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    let url = v["url"].as_str().ok_or("no checkout url")?.to_string();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = call("POST", &url, &form, "card_number=4242+4242+4242+4242&exp=12%2F34&cvc=123".into()).await?;
    let success = expect(r, 303, "pay")?.location.ok_or("no success URL")?;
    let r = expect(call("GET", &success, &[], String::new()).await?, 302, "success redirect")?;
    match r.location.as_deref() {
        Some(l) if l.contains("/thanks_upgrade") => Ok(started.elapsed().as_secs_f64()),
        other => Err(format!("{user}: redirected to {other:?}")),
    }
}

/// Runs `users` journeys at once against `local_bin` started with `env`.
pub async fn run(local_bin: &Path, label: &str, env: &[(&str, &str)], users: usize) -> Result<Run, String> {
    let data = std::env::temp_dir().join(format!("paykey-journeys-{}", uuid_like()));
    let mut cmd = Command::new(local_bin);
    cmd.env("PAYKEY_PORT", "0")
        .env("PAYKEY_DATA_DIR", &data)
        .env("RUST_LOG", "warn")
        .env_remove("STRIPE_API_KEY")
        .env_remove("PAYKEY_CATALOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", local_bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    // Log lines of the stack's background work may come before its URL line.
    let base = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("paykey local stack on ").map(|b| b.trim().to_string()));
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let result = async {
        let base = base.ok_or("paykey-local printed no URL line")?;
        let started = Instant::now();
        let tasks: Vec<_> = (0..users).map(|n| tokio::spawn(journey(base.clone(), format!("bench{n:03}")))).collect();
        let mut journeys = Vec::new();
        for t in tasks {
            journeys.push(t.await.map_err(|e| e.to_string())??);
        }
        let total = started.elapsed().as_secs_f64();
        journeys.sort_by(|a, b| a.total_cmp(b));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let data_file = std::fs::metadata(data.join("state.json")).map(|m| m.len()).unwrap_or(0);
        Ok(Run { label: label.to_string(), journeys, total, data_file })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
    result
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// The Markdown table for several runs.
pub fn table(runs: &[Run], users: usize) -> String {
    let mut md = format!(
        "| local stack ({users} concurrent journeys) | journey median s | min–max s | all done after s | state.json bytes |\n|---|---|---|---|---|\n"
    );
    for r in runs {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2}–{:.2} | {:.2} | {} |\n",
            r.label,
            r.median(),
            r.journeys.first().copied().unwrap_or(0.0),
            r.journeys.last().copied().unwrap_or(0.0),
            r.total,
            r.data_file
        ));
    }
    md
}
