//! `paykey-bench`: cold start, peak memory, binary size, backend round trips and warm handler
//! overhead of every paykey function, side by side with a hello-world floor and the original
//! Python design, in one run. Writes a Markdown table (BENCHMARKS.md by default).
//!
//! ```text
//! cargo build --release -p paykey-bench -p hello-floor -p create-checkout-session -p create-api-key \
//!     -p create-billing-portal -p get-account -p stripe-webhook     # hello-floor builds tls-floor too
//! bash infra/scripts/build-lambdas.sh            # arm64 sizes (optional)
//! target/release/paykey-bench [--runs 10] [--bin-dir target/release] [--out BENCHMARKS.md]
//! paykey-bench --short                           # a quick check that the harness works
//! ```

use paykey_bench::{connections, latency, runtime_api, warm};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

const FUNCTIONS: [&str; 5] =
    ["create-checkout-session", "create-api-key", "create-billing-portal", "get-account", "stripe-webhook"];

struct Opts {
    runs: usize,
    short: bool,
    /// Only the latency model (issue 27).
    latency_only: bool,
    bin_dir: PathBuf,
    lambda_dir: PathBuf,
    python: PathBuf,
    out: PathBuf,
}

fn parse_args() -> Result<Opts, String> {
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("target"));
    let home = std::env::var("HOME").unwrap_or_default();
    let mut o = Opts {
        runs: 10,
        short: false,
        latency_only: false,
        bin_dir: target.join("release"),
        lambda_dir: target.join("lambda"),
        // the test command's venv (`PAYKEY_CACHE`, default ~/.cache/paykey): boto3 + stripe
        python: std::env::var("PAYKEY_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(format!("{home}/.cache/paykey")))
            .join("venv/bin/python"),
        out: PathBuf::from("BENCHMARKS.md"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = v()?.parse().map_err(|_| "--runs takes a number")?,
            "--short" => o.short = true,
            "--latency" => o.latency_only = true,
            "--bin-dir" => o.bin_dir = PathBuf::from(v()?),
            "--lambda-dir" => o.lambda_dir = PathBuf::from(v()?),
            "--python" => o.python = PathBuf::from(v()?),
            "--out" => o.out = PathBuf::from(v()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.short {
        o.runs = 1;
    }
    Ok(o)
}

/// The event each target answers without any backend call: a CORS preflight, a malformed
/// verification link (→ cancel page), an unsigned webhook (→ 400).
fn event_for(name: &str) -> String {
    let (method, path, resource) = match name {
        "create-api-key" => ("GET", "/create-api-key/x/y", "/create-api-key/{session_id}/{one_time_key}"),
        "stripe-webhook" => ("POST", "/stripe/webhook", "/stripe/webhook"),
        "create-billing-portal" => ("OPTIONS", "/create-billing-portal-by-user", "/create-billing-portal-by-user"),
        "get-account" => ("OPTIONS", "/account", "/account"),
        _ => ("OPTIONS", "/checkout-sessions", "/checkout-sessions"),
    };
    json!({
        "resource": resource, "path": path, "httpMethod": method, "headers": {"Host": "bench.example"},
        "multiValueHeaders": {"Host": ["bench.example"]}, "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": if name == "create-api-key" { json!({"session_id": "x", "one_time_key": "y"}) } else { json!(null) },
        "stageVariables": null,
        "requestContext": {"resourcePath": resource, "httpMethod": method, "path": format!("/prod{path}"), "stage": "prod",
            "requestId": "bench", "accountId": "000000000000", "apiId": "bench", "domainName": "bench.example",
            "identity": {"sourceIp": "127.0.0.1"}, "requestTimeEpoch": 0},
        "body": null, "isBase64Encoded": false,
    })
    .to_string()
}

fn function_env(api: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "bench".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "AKIABENCHMARK".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ("MY_DOMAIN", "https://app.example.com".into()),
        ("USER_POOL_ID", "us-east-1_bench".into()),
        ("DYNAMODB_STRIPE_TABLE", "sessions".into()),
        ("DYNAMODB_API_KEY_TABLE", "api-keys".into()),
        ("USAGE_PLAN_ID", "plan".into()),
        ("STRIPE_API_KEY", "sk_test_bench".into()),
        ("STRIPE_WEBHOOK_SECRET", "whsec_bench".into()),
        ("STRIPE_PORTAL_CONFIGURATION", "bpc_bench".into()),
        ("RUST_LOG", "warn".into()),
    ]
}

struct Sample {
    ms: f64,
    rss_kib: u64,
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where TLS root certificates are found, as a child process sees it.
struct CertEnv {
    name: &'static str,
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR`; `None`: both unset (the machine's defaults).
    vars: Option<(PathBuf, PathBuf)>,
}

/// Lambda's `provided.al2023` has one CA bundle file and no certificate directory; this
/// Debian machine has a directory of ~300 files beside its bundle. The Lambda-like
/// environment points `SSL_CERT_FILE` at the bundle and `SSL_CERT_DIR` at an empty folder.
fn cert_envs() -> Result<Vec<CertEnv>, String> {
    let bundle = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("no CA bundle file found (looked for Debian's, Amazon Linux's and /etc/ssl/cert.pem)")?;
    let empty = std::env::temp_dir().join(format!("paykey-bench-empty-certs-{}", std::process::id()));
    std::fs::create_dir_all(&empty).map_err(|e| format!("{}: {e}", empty.display()))?;
    Ok(vec![
        CertEnv { name: "Lambda-like (one CA bundle file, empty SSL_CERT_DIR)", vars: Some((bundle, empty)) },
        CertEnv { name: "this machine's default (SSL_CERT_FILE/SSL_CERT_DIR unset)", vars: None },
    ])
}

/// Exec → first response posted to the Runtime API, and peak RSS at that moment.
async fn cold_start(program: &Path, args: &[&str], event: String, certs: &CertEnv) -> Result<Sample, String> {
    let mut api = runtime_api::start(event).await.map_err(|e| e.to_string())?;
    let addr = api.addr.to_string();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in function_env(&addr) {
        cmd.env(k, v);
    }
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    if let Some((file, dir)) = &certs.vars {
        cmd.env("SSL_CERT_FILE", file).env("SSL_CERT_DIR", dir);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", program.display()))?;
    let pid = child.id().unwrap_or(0);
    let outcome = tokio::time::timeout(Duration::from_secs(60), &mut api.outcome).await;
    let rss = peak_rss_kib(pid);
    let _ = child.kill().await;
    match outcome {
        Ok(Ok(runtime_api::Outcome::Response { at, .. })) => {
            Ok(Sample { ms: (at - started).as_secs_f64() * 1000.0, rss_kib: rss })
        }
        Ok(Ok(runtime_api::Outcome::Error { at, body })) => {
            Err(format!("{} reported an error after {:?}: {body}", program.display(), at - started))
        }
        _ => Err(format!("{} gave no response within 60 s", program.display())),
    }
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Stats { median, min: v.first().copied().unwrap_or(0.0), max: v.last().copied().unwrap_or(0.0) }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024)
        })
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, {mem} GiB, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("paykey-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&o).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paykey-bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(o: &Opts) -> Result<(), String> {
    let moto = std::env::var("PAYKEY_MOTO_URL").ok().filter(|u| !u.is_empty());
    let (lat_runs, lat_warm) = if o.short { (1, 1) } else { (3, 3) };
    if o.latency_only {
        let md = latency_section(moto.clone(), o.bin_dir.clone(), o.python.clone(), lat_runs, lat_warm).await?;
        std::fs::write(&o.out, &md).map_err(|e| format!("{}: {e}", o.out.display()))?;
        println!("{md}");
        return Ok(());
    }
    let mut md = String::new();
    md.push_str("# paykey benchmarks\n\n");
    md.push_str(&format!(
        "Machine: {}. Date: {}. Command: `paykey-bench --runs {}{} --bin-dir {}`.\n\n",
        machine(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        o.runs,
        if o.short { " --short" } else { "" },
        o.bin_dir.display()
    ));

    // ---- cold start
    md.push_str("## Cold start (exec → first response posted to a Lambda Runtime API emulator on loopback)\n\n");
    md.push_str(&format!("{} runs each, interleaved (targets and certificate environments alternate); median (min–max). The invocation needs no backend call (preflight, malformed link, unsigned webhook), so this is init + one request. The TLS floor is the hello world plus aws-config loaded and one HTTPS client built with the Stripe client's roots: what any function that calls AWS and an HTTPS API pays.\n\n", o.runs));
    let mut targets: Vec<(String, PathBuf, Vec<String>)> = vec![
        ("hello-floor (lambda_http hello world)".into(), o.bin_dir.join("hello-floor"), vec![]),
        ("tls-floor (hello + aws-config + one HTTPS client)".into(), o.bin_dir.join("tls-floor"), vec![]),
    ];
    for f in FUNCTIONS {
        targets.push((f.to_string(), o.bin_dir.join(f), vec![]));
    }
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/app.py");
    if o.python.is_file() {
        targets.push((
            "reference: original Python design (boto3 + stripe)".into(),
            o.python.clone(),
            vec![reference.display().to_string()],
        ));
    }
    let envs = cert_envs()?;
    let mut samples: Vec<Vec<Vec<Sample>>> =
        envs.iter().map(|_| targets.iter().map(|_| Vec::new()).collect()).collect();
    for _ in 0..o.runs {
        for (e, certs) in envs.iter().enumerate() {
            for (i, (name, program, args)) in targets.iter().enumerate() {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let event = event_for(name.split(' ').next().unwrap_or(""));
                samples[e][i].push(cold_start(program, &args, event, certs).await?);
            }
        }
    }
    for (certs, samples) in envs.iter().zip(&samples) {
        md.push_str(&format!("### {}\n\n", certs.name));
        md.push_str("| target | cold start ms | × hello floor | × TLS floor | peak RSS MiB |\n|---|---|---|---|---|\n");
        let floor = stats(samples[0].iter().map(|s| s.ms).collect()).median;
        let tls_floor = stats(samples[1].iter().map(|s| s.ms).collect()).median;
        for ((name, _, _), s) in targets.iter().zip(samples) {
            let t = stats(s.iter().map(|x| x.ms).collect());
            let rss = stats(s.iter().map(|x| x.rss_kib as f64 / 1024.0).collect());
            md.push_str(&format!(
                "| {name} | {:.1} ({:.1}–{:.1}) | {:.2} | {:.2} | {:.1} ({:.1}–{:.1}) |\n",
                t.median,
                t.min,
                t.max,
                t.median / floor,
                t.median / tls_floor,
                rss.median,
                rss.min,
                rss.max
            ));
        }
        md.push('\n');
    }
    if let Some((_, dir)) = envs.iter().find_map(|e| e.vars.as_ref()) {
        let _ = std::fs::remove_dir(dir);
    }

    // ---- sizes
    md.push_str(
        "\n## Binary size (stripped release, bytes)\n\n| binary | x86_64 | arm64 (cargo lambda) |\n|---|---|---|\n",
    );
    let fmt =
        |v: Option<u64>| v.map(|b| format!("{b} ({:.1} MB)", b as f64 / 1e6)).unwrap_or_else(|| "not built".into());
    for f in ["hello-floor", "tls-floor"].into_iter().chain(FUNCTIONS) {
        let x86 = o.bin_dir.join(f);
        let arm = o.lambda_dir.join(f).join("bootstrap");
        // An arm64 binary left from an earlier build would be reported as this code's size.
        let arm = match (modified(&arm), modified(&x86)) {
            (Some(a), Some(x)) if a < x => "older than the x86_64 build: not reported".to_string(),
            _ => fmt(size(&arm)),
        };
        md.push_str(&format!("| {f} | {} | {arm} |\n", fmt(size(&x86))));
    }

    // ---- round trips and warm overhead
    md.push_str(&warm::round_trips().await);
    md.push_str(&warm::warm_overhead(if o.short { 50 } else { 2000 }).await);
    let moto_for_connections = moto.clone();
    // On a current-thread runtime, as the functions run (`#[tokio::main(flavor = "current_thread")]`).
    let invocations = if o.short { 3 } else { 20 };
    let section = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(connections::warm_connections(invocations, moto_for_connections.as_deref()))
    })
    .await
    .map_err(|e| e.to_string())??;
    md.push_str(&section);
    md.push_str(&latency_section(moto, o.bin_dir.clone(), o.python.clone(), lat_runs, lat_warm).await?);

    std::fs::write(&o.out, &md).map_err(|e| format!("{}: {e}", o.out.display()))?;
    println!("{md}");
    println!("written to {}", o.out.display());
    Ok(())
}

/// The latency model's section, on its own runtime thread (the proxies and the emulator serve
/// while the harness waits for the functions).
async fn latency_section(
    moto: Option<String>,
    bin_dir: PathBuf,
    python: PathBuf,
    runs: usize,
    warm: usize,
) -> Result<String, String> {
    tokio::spawn(async move { latency::section(moto.as_deref(), &bin_dir, &python, runs, warm).await })
        .await
        .map_err(|e| e.to_string())?
}
