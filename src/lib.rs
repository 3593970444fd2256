//! Sesh: real-time session coordination on Cloudflare Workers.
//!
//! The crate is the Worker. Everything that decides (token checks, routing,
//! configuration, errors, ids, time) is plain Rust that also builds and is
//! tested natively; the modules that talk to the Workers runtime (`gateway`,
//! `objects`, `http`) exist only on wasm32. See ARCHITECTURE.md.

pub mod auth;
pub mod calls;
pub mod config;
pub mod console;
pub mod core;
pub mod error;
pub mod ids;
pub mod route;
pub mod time;

#[cfg(target_arch = "wasm32")]
mod db;
#[cfg(all(target_arch = "wasm32", feature = "test-faults"))]
pub mod faults;
#[cfg(target_arch = "wasm32")]
mod gateway;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
pub mod lifecycle;
#[cfg(target_arch = "wasm32")]
mod objects;
#[cfg(target_arch = "wasm32")]
mod reads;
#[cfg(target_arch = "wasm32")]
mod scheduled;
