//! The data layer: SQL text and the rows D1 answers, as plain values.
//!
//! Architecture Invariant: the modules form one order, and each uses only
//! the modules before it (and `crate::time`, `sesh_protocol`, libraries):
//!
//! 1. [`partition`]: names every partition table and its columns (the one
//!    column list), the statements creating partitions, where a row goes,
//!    and the row-reading helpers;
//! 2. [`history`]: the queries: the list, the writes of a flush (session
//!    row, members, points, point months, roll-up marks, stats) and the
//!    reads of a retired session;
//! 3. [`d1`]: the flush plan, which orders `history`'s writes for one
//!    batch;
//! 4. [`rollup`]: the analytics roll-up and the metrics query.
//!
//! Nothing here uses a core (`crate::session`, `presence`, `quota`,
//! `calls`) or the lifecycle steps (`crate::lifecycle`), which come after
//! the whole layer. A session is read and written as the one session row
//! type, [`sesh_protocol::SessionSummary`]. The test in `layers.rs` checks
//! this order on the source files.

pub mod d1;
pub mod history;
pub mod partition;
pub mod rollup;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod layers;
