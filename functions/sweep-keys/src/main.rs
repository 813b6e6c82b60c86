//! `sweep-keys` Lambda, invoked by an EventBridge schedule every minute: disables the
//! rotated-out API keys whose grace has ended, ends complimentary tiers whose time is up, and
//! once an hour deletes idle free keys (`FREE_KEY_IDLE_DAYS`), reports the metered tiers' daily
//! usage to Stripe's meter and writes the account's API key count as the `KeyCount` metric
//! (`flows::scheduled_run`). Builds everything once per cold start.

use lambda_http::lambda_runtime::{self, LambdaEvent};
use lambda_http::{service_fn, Error};
use paykey::{config::Env, flows, telemetry, wiring};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let app = wiring::sweep_app(&Env::from_process()).await.inspect_err(|e| telemetry::init_failed(e))?;
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        // EventBridge's scheduled time (`time`), so a late start still counts its hour.
        let run = flows::scheduled_run(
            &app.store,
            &app.keys,
            &app.users,
            app.payments.as_ref(),
            app.ctx(),
            event.payload["time"].as_str(),
        )
        .await;
        if let Some(n) = run.key_count {
            telemetry::key_count(n);
        }
        // A failed sweep fails the invocation: the next scheduled run (a minute later) tries again.
        if let Some(Ok(done)) = &run.reclaimed {
            telemetry::keys_reclaimed(done.len());
        }
        let disabled = run.disabled?;
        let comps_ended = run.comps_ended?;
        let reclaimed = run.reclaimed.transpose()?.map(|r| r.len());
        let usage = run.usage.transpose()?;
        Ok::<_, Error>(json!({
            "disabled": disabled.len(),
            "comps_ended": comps_ended.len(),
            "reclaimed": reclaimed,
            "usage_events": usage.as_ref().map(|u| u.events),
            "usage_reported_through": usage.as_ref().and_then(|u| u.reported_through).map(|d| d.to_string()),
            "key_count": run.key_count
        }))
    }))
    .await
}
