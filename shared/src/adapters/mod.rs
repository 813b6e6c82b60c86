//! Adapters: the ports implemented on AWS, Stripe, and in memory.

pub mod aws;
pub mod cached;
pub mod https;
pub mod memory;
pub mod patient;
pub mod stripe;
pub mod stripe_client;
