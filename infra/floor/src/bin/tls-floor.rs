//! The TLS floor: the hello world, plus what any function that calls AWS and an HTTPS API
//! must do at init: load aws-config (region, credentials chain, endpoint) and build one
//! HTTPS client with the roots paykey's Stripe client uses (webpki-roots compiled in,
//! rustls on aws-lc-rs). The difference between a paykey function and this floor is
//! paykey's own init; the difference between this floor and the hello world is the
//! unavoidable part.

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use lambda_http::{run, service_fn, Body, Error, Request, Response};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(HttpConnector::new());
    let https: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let (aws, https) = (&aws, &https);
    run(service_fn(move |_req: Request| async move {
        let _ = (aws.region(), https);
        Ok::<_, Error>(Response::new(Body::from("hello")))
    }))
    .await
}
