//! Structured JSON logs, set up once per process. `RUST_LOG` filters (default `info`).

use tracing_subscriber::EnvFilter;

/// JSON lines on stdout, without ANSI colours and without the time (CloudWatch adds it).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}
