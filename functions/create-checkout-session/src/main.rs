//! `create-checkout-session` Lambda: build everything once per cold start, then serve.

use lambda_http::{run, service_fn, Error};
use paykey::{config::Env, handlers, telemetry, wiring};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let app = wiring::checkout_app(&Env::from_process()).await.inspect_err(|e| telemetry::init_failed(e))?;
    run(service_fn(|req| handlers::checkout_routes(&app, req))).await
}
