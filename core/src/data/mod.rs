//! The data layer, in one direction: `partition` names every D1 table and
//! row shape; `history` (queries: the list, the flush plan, retired reads)
//! builds on it; `rollup` builds on both. Nothing here looks back up the
//! list. The lifecycle steps (`crate::lifecycle`) come after all of them.

pub mod d1;
pub mod history;
pub mod partition;
pub mod rollup;
