//! The objects' logic as plain Rust: events in, decisions out, time passed
//! in as a value. Nothing here imports `worker`; the adapters in
//! `crate::objects` carry the decisions out.

pub mod archive;
pub mod clock;
pub mod d1;
pub mod export;
pub mod history;
pub mod lifecycle;
pub mod partition;
pub mod presence;
pub mod quota;
pub mod rollup;
pub mod session;
pub mod store;
