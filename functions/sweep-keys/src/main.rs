//! `sweep-keys` Lambda, invoked by an EventBridge schedule: disables the rotated-out API keys
//! whose grace has ended (`flows::sweep_expired_keys`). Builds everything once per cold start.

use lambda_http::lambda_runtime::{self, LambdaEvent};
use lambda_http::{service_fn, Error};
use paykey::{config::Env, flows, telemetry, wiring};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let app =
        wiring::sweep_app(&Env::from_process()).await.inspect_err(|e| tracing::error!(error = %e, "init failed"))?;
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| async {
        // An error fails the invocation: the next scheduled run (a minute later) tries again.
        let disabled = flows::sweep_expired_keys(&app.store, &app.keys, app.ctx()).await?;
        Ok::<_, Error>(json!({ "disabled": disabled.len() }))
    }))
    .await
}
