//! Sesh's logic as plain Rust: every object's core, the data layer, the
//! lifecycle drivers, typed calls between objects, configuration, routing,
//! authentication and time. Events and I/O answers go in, decisions come
//! out, time is passed in as a value. Nothing here imports `worker`,
//! `wasm-bindgen` or `js-sys` (the crate's manifest has none of them), so a
//! dependency from a core back onto the runtime cannot compile. The Worker
//! crate (`sesh`) carries the decisions out. See ARCHITECTURE.md.

pub mod auth;
pub mod calls;
pub mod clock;
pub mod config;
pub mod data;
pub mod lifecycle;
pub mod outbox;
pub mod presence;
pub mod quota;
pub mod route;
pub mod session;
pub mod time;

/// Helpers the tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A v7 session id for the moment `now_ms`, as the Worker mints them
    /// (the random part is a counter: ids differ, runs repeat).
    pub fn new_session_id(now_ms: crate::time::Millis) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let ms = u64::try_from(now_ms).unwrap_or(0) & 0xffff_ffff_ffff;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
            ms >> 16,
            ms & 0xffff,
            n & 0xfff,
            0x8000 | ((n >> 12) & 0x3fff),
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_ffff_ffff
        )
    }
}
