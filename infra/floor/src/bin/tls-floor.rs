//! The TLS floor: the hello world, plus what any function that calls AWS and an HTTPS API
//! must do at init: load aws-config (region, credentials chain, endpoint) with one HTTPS
//! client built on the compiled-in roots (paykey's `adapters::aws::load_config`, the same
//! call every paykey function makes). The difference between a paykey function and this
//! floor is paykey's own init; the difference between this floor and the hello world is
//! the part a function that calls AWS over HTTPS cannot avoid.

use lambda_http::{run, service_fn, Body, Error, Request, Response};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let aws = paykey::adapters::aws::load_config().await;
    let aws = &aws;
    run(service_fn(move |_req: Request| async move {
        let _ = aws.region();
        Ok::<_, Error>(Response::new(Body::from("hello")))
    }))
    .await
}
