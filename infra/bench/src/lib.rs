//! The benchmark harness's parts: a Lambda Runtime API emulator and the in-memory warm and
//! round-trip measurements (also used by the criterion benches).

pub mod connections;
pub mod journeys;
pub mod latency;
pub mod runtime_api;
pub mod warm;
