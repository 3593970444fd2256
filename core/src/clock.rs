//! A clock that reads the time the core was last given, so that `governor`
//! limiters run on the same virtual time as everything else in a core.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::time::Millis;

/// Shared, settable time for `governor` limiters. Cloning shares the time.
#[derive(Debug, Clone, Default)]
pub struct VirtualClock(Rc<Cell<Millis>>);

impl VirtualClock {
    /// Moves the clock to `now`. Time never goes backwards: an earlier value
    /// (a clock step on the host) is ignored, as GCRA assumes monotonic time.
    pub fn set(&self, now: Millis) {
        if now > self.0.get() {
            self.0.set(now);
        }
    }

    /// The current virtual time.
    pub fn get(&self) -> Millis {
        self.0.get()
    }
}

impl governor::clock::Clock for VirtualClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.get()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_time_and_never_go_back() {
        let a = VirtualClock::default();
        let b = a.clone();
        a.set(1_000);
        assert_eq!(b.get(), 1_000);
        b.set(500);
        assert_eq!(a.get(), 1_000);
        assert_eq!(governor::clock::Clock::now(&a), Duration::from_secs(1));
    }
}
