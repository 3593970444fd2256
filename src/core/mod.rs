//! The objects' logic as plain Rust: events in, decisions out, time passed
//! in as a value. Nothing here imports `worker`; the adapters in
//! `crate::objects` carry the decisions out.

pub mod clock;
pub mod d1;
pub mod history;
pub mod partition;
pub mod presence;
pub mod quota;
pub mod rollup;
pub mod session;
