//! Flood limits: a GCRA limiter per connection (refusals counted, the
//! connection closed past a bound) and one per session over every
//! connection's frames, so no single socket nor a crowd of them slows the
//! others down.

use std::num::NonZeroU32;

use governor::{Quota, RateLimiter};

use crate::clock::VirtualClock;
use crate::time::Millis;

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    VirtualClock,
    governor::middleware::NoOpMiddleware<std::time::Duration>,
>;

/// A GCRA limiter of `per_sec` frames a second with a `burst`.
pub struct Gcra(Limiter);

impl Gcra {
    /// A full bucket on `clock`.
    pub fn new(per_sec: u32, burst: u32, clock: &VirtualClock) -> Gcra {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Gcra(RateLimiter::direct_with_clock(
            Quota::per_second(per_sec).allow_burst(burst),
            clock.clone(),
        ))
    }

    /// Takes one frame: `Ok`, or the milliseconds until one is allowed.
    pub fn take(&self, clock: &VirtualClock) -> Result<(), u64> {
        self.0.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(clock));
            wait.as_millis().max(1) as u64
        })
    }
}

/// Refusals of one connection, each within a second of the previous.
#[derive(Debug, Clone, Copy)]
pub struct Strikes {
    count: u32,
    last: Millis,
}

impl Default for Strikes {
    fn default() -> Self {
        Strikes {
            count: 0,
            last: Millis::MIN,
        }
    }
}

impl Strikes {
    /// Counts a refusal at `now`; a second without one forgives the earlier.
    /// Returns the refusals in the current run.
    pub fn strike(&mut self, now: Millis) -> u32 {
        if now.saturating_sub(self.last) > 1_000 {
            self.count = 0;
        }
        self.count += 1;
        self.last = now;
        self.count
    }
}
