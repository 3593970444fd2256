//! The edge: what every request and scheduled event meets first. The
//! gateway authenticates, charges API quota and routes to an object; the
//! HTTP glue turns runtime requests into typed calls and answers back;
//! `reads` answers retired sessions from D1 and R2; `scheduled` runs
//! roll-ups and the lifecycle. Only `console` (the embedded pages) is
//! plain Rust; the rest exists on wasm32.

pub mod console;

#[cfg(target_arch = "wasm32")]
pub(crate) mod gateway;
#[cfg(target_arch = "wasm32")]
pub(crate) mod http;
#[cfg(target_arch = "wasm32")]
pub(crate) mod reads;
#[cfg(target_arch = "wasm32")]
pub(crate) mod scheduled;
