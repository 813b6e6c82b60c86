//! `paykey-stripe-emulator [--port N] [--webhook-url URL] [--webhook-secret whsec_…]`

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = stripe_emulator::Config::default();
    let mut port: u16 = 12111;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().ok_or("--port needs a number")?.parse()?,
            "--webhook-url" => config.webhook_url = Some(args.next().ok_or("--webhook-url needs a URL")?),
            "--webhook-secret" => config.webhook_secret = args.next().ok_or("--webhook-secret needs a whsec_ value")?,
            "--portal-cancel" => {
                config.portal_cancel_mode = args.next().ok_or("--portal-cancel needs immediately|at_period_end")?
            }
            "-h" | "--help" => {
                println!("paykey-stripe-emulator [--port 12111] [--webhook-url URL] [--webhook-secret whsec_…] [--portal-cancel immediately|at_period_end]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)").into()),
        }
    }
    let running = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], port)), config).await?;
    println!("Stripe emulator on {} (use STRIPE_API_BASE={0}/ and any sk_test_… key)", running.base_url());
    println!("webhook signing secret: {}", running.webhook_secret());
    running.task.await?;
    Ok(())
}
