//! Sesh: real-time session coordination on Cloudflare Workers.
//!
//! This crate is the Worker: the edge (`edge`: gateway, HTTP glue, reads,
//! the scheduled handler), the Durable Object adapters (`objects`), the
//! lifecycle adapter and the one mapping of errors to HTTP and close codes
//! (`error`). Everything that decides lives in `sesh_core`, which knows
//! nothing of the runtime; the modules here carry its decisions out. See
//! ARCHITECTURE.md.

pub mod edge;
pub mod error;
pub mod ids;
pub mod time;

#[cfg(target_arch = "wasm32")]
mod db;
#[cfg(all(target_arch = "wasm32", feature = "test-faults"))]
pub mod faults;
#[cfg(target_arch = "wasm32")]
pub mod lifecycle;
#[cfg(target_arch = "wasm32")]
mod objects;
