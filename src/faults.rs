//! Fault switches for tests, compiled only with the `test-faults` feature
//! (the xtask enables it for the integration run; deployed builds never
//! have it). The switch is per isolate, which under `wrangler dev` is the
//! whole Worker, objects included.

use std::sync::atomic::{AtomicBool, Ordering};

static D1_FAILING: AtomicBool = AtomicBool::new(false);
static PRESENCE_FAILING: AtomicBool = AtomicBool::new(false);

/// Makes every D1 write fail (`true`) or work again (`false`).
pub fn set_d1_failing(on: bool) {
    D1_FAILING.store(on, Ordering::SeqCst);
}

/// Whether D1 writes are to fail now.
pub fn d1_failing() -> bool {
    D1_FAILING.load(Ordering::SeqCst)
}

/// A point of this kind makes the storage transaction that writes it fail
/// (after its points were inserted), so tests see the rollback.
pub const FAIL_STORE_KIND: &str = "fault.store";

/// Makes every presence delivery of a session fail with an error (`true`)
/// or work again (`false`), to show that the other steps of an alarm still
/// run and the alarm is armed again.
pub fn set_presence_failing(on: bool) {
    PRESENCE_FAILING.store(on, Ordering::SeqCst);
}

/// Whether presence deliveries are to fail now.
pub fn presence_failing() -> bool {
    PRESENCE_FAILING.load(Ordering::SeqCst)
}
