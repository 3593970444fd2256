//! The few things the live task needs from its runtime, per target: a
//! clock, timers, spawning and a random seed.

use std::future::Future;
use std::time::Duration;

/// Milliseconds on a clock that never goes back within the process.
#[cfg(not(target_arch = "wasm32"))]
pub fn now_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Milliseconds on the page's monotonic clock (`performance.now()` is not
/// in every worker scope, so the wall clock, kept from going back).
#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = js_sys::Date::now() as u64;
    LAST.fetch_max(now, Ordering::Relaxed).max(now)
}

/// Waits `d`.
#[cfg(not(target_arch = "wasm32"))]
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await
}

/// Waits `d`.
#[cfg(target_arch = "wasm32")]
pub async fn sleep(d: Duration) {
    gloo_timers::future::sleep(d).await
}

/// Runs `f` in the background on the current tokio runtime.
#[cfg(not(target_arch = "wasm32"))]
pub fn spawn<F: Future<Output = ()> + Send + 'static>(f: F) {
    tokio::spawn(f);
}

/// Runs `f` in the background on the page's event loop.
#[cfg(target_arch = "wasm32")]
pub fn spawn<F: Future<Output = ()> + 'static>(f: F) {
    wasm_bindgen_futures::spawn_local(f);
}

/// A random seed from the OS (hash keys are seeded from it).
#[cfg(not(target_arch = "wasm32"))]
pub fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A random seed from the browser.
#[cfg(target_arch = "wasm32")]
pub fn seed() -> u64 {
    (js_sys::Math::random() * (u64::MAX as f64)) as u64
}
