//! paykey: sell an HTTP API by subscription on AWS.
//!
//! - [`domain`]: plain types and the one error enum;
//! - [`ports`]: the traits the flows are generic over;
//! - [`flows`]: the use-cases (checkout, fulfilment, billing portal, account);
//! - [`adapters`]: DynamoDB, Cognito, API Gateway, Stripe, and in-memory;
//! - [`http`] and [`handlers`]: API Gateway REST proxy events in, HTTP responses out;
//! - [`config`]: environment → settings, once per cold start.

pub mod adapters;
pub mod config;
pub mod domain;
pub mod flows;
pub mod handlers;
pub mod http;
pub mod ports;
pub mod telemetry;
pub mod wiring;

pub use domain::Error;
