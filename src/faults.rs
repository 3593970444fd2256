//! Fault switches for tests, compiled only with the `test-faults` feature
//! (the xtask enables it for the integration run; deployed builds never
//! have it). The switch is per isolate, which under `wrangler dev` is the
//! whole Worker, objects included.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::lifecycle::Carrier;
use sesh_core::lifecycle::store::{Answer, Io, LifecycleError};

static D1_FAILING: AtomicBool = AtomicBool::new(false);
static PRESENCE_FAILING: AtomicBool = AtomicBool::new(false);
static D1_SLOW: AtomicBool = AtomicBool::new(false);

/// Makes every session flush to D1 take [`D1_SLOW_MS`] longer (`true`),
/// so tests see what waits for a flush.
pub fn set_d1_slow(on: bool) {
    D1_SLOW.store(on, Ordering::SeqCst);
}

/// Whether session flushes are to be slow now.
pub fn d1_slow() -> bool {
    D1_SLOW.load(Ordering::SeqCst)
}

/// The delay of a slow flush.
pub const D1_SLOW_MS: u64 = 3_000;

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

static HANG_AFTER: AtomicU32 = AtomicU32::new(0);
static LIFECYCLE_CALLS: AtomicU32 = AtomicU32::new(0);
static HUNG: AtomicBool = AtomicBool::new(false);

/// Makes the next scheduled lifecycle run stop for good before its D1 or
/// R2 call number `calls + 1` (0: never), so a test can SIGKILL the runtime
/// at a known point inside a run that has done part of its work. A
/// restarted runtime starts unarmed.
pub fn arm_lifecycle_hang(calls: u32) {
    HANG_AFTER.store(calls, Ordering::SeqCst);
    LIFECYCLE_CALLS.store(0, Ordering::SeqCst);
    HUNG.store(false, Ordering::SeqCst);
}

/// Whether a lifecycle run is stopped at its armed call.
pub fn lifecycle_hung() -> bool {
    HUNG.load(Ordering::SeqCst)
}

/// Counts a lifecycle call and, when it is past the armed one, waits
/// (longer than any test) instead of going on. A timer, not a future that
/// never wakes: the runtime cancels a handler with nothing left to wait for.
async fn lifecycle_call() {
    let armed = HANG_AFTER.load(Ordering::SeqCst);
    if armed == 0 || LIFECYCLE_CALLS.fetch_add(1, Ordering::SeqCst) < armed {
        return;
    }
    HUNG.store(true, Ordering::SeqCst);
    worker::Delay::from(std::time::Duration::from_secs(3600)).await;
}

/// A lifecycle carrier that stops at the armed call ([`arm_lifecycle_hang`]).
pub struct Hanging<C>(pub C);

impl<C: Carrier> Carrier for Hanging<C> {
    async fn carry(&self, io: Io) -> Result<Answer, LifecycleError> {
        lifecycle_call().await;
        self.0.carry(io).await
    }
}
