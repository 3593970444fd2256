//! Points units in hand: taken from the owner's daily counter in blocks,
//! spent one per stored point, and settled back to the UTC day they came
//! from (CONTRACT.md section 7).

use crate::time::Millis;

const DAY_MS: Millis = 86_400_000;

/// The start of the UTC day holding `now`.
pub fn day_of(now: Millis) -> Millis {
    now.div_euclid(DAY_MS) * DAY_MS
}

/// Milliseconds from `now` to the start of the next UTC day.
pub fn until_next_day(now: Millis) -> u64 {
    (day_of(now) + DAY_MS - now).max(1) as u64
}

/// Units held by the session, all from one UTC day. Persisted with every
/// change (in the same transaction as the points that spent them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Units {
    /// The UTC day (ms at its start) the units were reserved on.
    pub day: Millis,
    /// Reserved and not spent yet.
    pub held: u64,
    /// Spent on stored points, not yet settled as used.
    pub used: u64,
}

/// Units of one day handed back to the owner's quota: `used` recorded
/// points, `returned` go back unused. Delivered through a durable outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// The UTC day the units were reserved on.
    pub day: Millis,
    /// Units spent on points.
    pub used: u64,
    /// Units not spent.
    pub returned: u64,
}

impl Units {
    /// Units of `day` that can be spent on a point recorded at `now`.
    pub fn spendable(&self, now: Millis) -> u64 {
        if self.day == day_of(now) {
            self.held
        } else {
            0
        }
    }

    /// Spends one unit on a stored point.
    pub fn spend(&mut self) {
        self.held = self.held.saturating_sub(1);
        self.used += 1;
    }

    /// Adds a grant from `day`. Units of another day are settled first
    /// (the returned settlement), so the units in hand are all of one day.
    pub fn add(&mut self, granted: u64, day: Millis) -> Option<Settlement> {
        let settled = if day != self.day {
            self.settle_all()
        } else {
            None
        };
        self.day = day;
        self.held += granted;
        settled
    }

    /// Settles the spent units, keeping the rest in hand.
    pub fn settle_used(&mut self) -> Option<Settlement> {
        (self.used > 0).then(|| Settlement {
            day: self.day,
            used: std::mem::take(&mut self.used),
            returned: 0,
        })
    }

    /// Settles everything: spent units as used, the rest returned.
    pub fn settle_all(&mut self) -> Option<Settlement> {
        (self.used > 0 || self.held > 0).then(|| Settlement {
            day: self.day,
            used: std::mem::take(&mut self.used),
            returned: std::mem::take(&mut self.held),
        })
    }

    /// At a UTC day change the units of the old day are settled.
    pub fn roll(&mut self, now: Millis) -> Option<Settlement> {
        let today = day_of(now);
        if self.day == today {
            return None;
        }
        let settled = self.settle_all();
        self.day = today;
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Millis = 1_764_028_800_000; // 2025-11-25T00:00:00Z

    #[test]
    fn units_are_spent_only_on_their_own_day() {
        let mut u = Units::default();
        assert_eq!(u.add(10, D), None);
        assert_eq!(u.spendable(D + 5), 10);
        assert_eq!(u.spendable(D + DAY_MS), 0);
        u.spend();
        assert_eq!(
            u.roll(D + DAY_MS + 1),
            Some(Settlement {
                day: D,
                used: 1,
                returned: 9
            })
        );
        assert_eq!(
            u,
            Units {
                day: D + DAY_MS,
                held: 0,
                used: 0
            }
        );
        assert_eq!(u.roll(D + DAY_MS + 2), None);
    }

    #[test]
    fn a_grant_of_another_day_settles_the_old_units() {
        let mut u = Units::default();
        u.add(3, D);
        u.spend();
        let s = u.add(5, D + DAY_MS).unwrap();
        assert_eq!((s.day, s.used, s.returned), (D, 1, 2));
        assert_eq!((u.held, u.used, u.day), (5, 0, D + DAY_MS));
        assert_eq!(until_next_day(D + DAY_MS - 1), 1);
        assert_eq!(until_next_day(D), DAY_MS as u64);
    }
}
