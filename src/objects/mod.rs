//! The Durable Object adapters. Each carries out what its core decides:
//! storage, sockets, alarms. They exist only on wasm32.

mod export;
mod presence;
pub(crate) mod quota;
mod session;

thread_local! {
    // D1 partitions this isolate has created or seen created, so a flush
    // issues `CREATE TABLE IF NOT EXISTS` only the first time. Only a
    // cache: the lifecycle drops a monthly table once it moved it, maybe
    // as of a later clock than this isolate's, so a failed batch forgets
    // its tables and the retry makes sure of them again.
    static PARTITIONS: std::cell::RefCell<std::collections::HashSet<String>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Whether this isolate already made sure the D1 table exists.
pub(crate) fn partition_known(table: &str) -> bool {
    PARTITIONS.with(|p| p.borrow().contains(table))
}

/// Notes that the D1 table exists.
pub(crate) fn remember_partition(table: String) {
    PARTITIONS.with(|p| {
        p.borrow_mut().insert(table);
    });
}

/// Forgets the D1 tables of a batch that failed: one may have been
/// dropped by a move since this isolate made sure of it.
pub(crate) fn forget_partitions(tables: &[String]) {
    PARTITIONS.with(|p| {
        let mut p = p.borrow_mut();
        for t in tables {
            p.remove(t);
        }
    });
}
