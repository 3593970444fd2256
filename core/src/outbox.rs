//! A durable outbox, kept as core state: entries go out one at a time, in
//! the order they were put in, each under a stable id, until the receiver
//! has taken them. The core that owns an outbox decides what to persist
//! and emits one delivery at a time ([`Outbox::next`]); the adapter carries
//! it out and answers with [`Outbox::delivered`] or
//! [`Outbox::undeliverable`]. An entry may reach its receiver more than
//! once (its answer lost, the object evicted mid-delivery), always under
//! the same id, so a receiver can apply it once.

use std::collections::BTreeMap;

use crate::time::Millis;

/// How long an outbox waits after a failed delivery before it tries again.
/// A fixed pause: the receivers are objects of the same Worker, whose
/// outages are short, and an entry that waits holds up only its own outbox.
pub const RETRY_MS: Millis = 2_000;

/// Entries of type `T` waiting for delivery, in id order.
#[derive(Debug, Clone)]
pub struct Outbox<T> {
    entries: BTreeMap<u64, T>,
    next_id: u64,
    // The entry out for delivery, if one is: the next waits for its answer.
    sending: Option<u64>,
    // No delivery before this, after a failed one.
    retry_at: Option<Millis>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox {
            entries: BTreeMap::new(),
            next_id: 1,
            sending: None,
            retry_at: None,
        }
    }
}

impl<T: Clone> Outbox<T> {
    /// An outbox holding what storage kept (`(id, entry)`); new entries get
    /// ids above every stored one and above `last_id`, the highest ever
    /// given (so no id is given twice, delivered entries' included).
    /// Nothing is out for delivery.
    pub fn restore(stored: impl IntoIterator<Item = (u64, T)>, last_id: u64) -> Outbox<T> {
        let entries: BTreeMap<u64, T> = stored.into_iter().collect();
        let next_id = entries
            .keys()
            .next_back()
            .map_or(0, |last| *last)
            .max(last_id)
            + 1;
        Outbox {
            entries,
            next_id,
            ..Outbox::default()
        }
    }

    /// Puts `item` in, returning its id (for storage and for the receiver).
    pub fn push(&mut self, item: T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(id, item);
        id
    }

    /// The entry to deliver now, if any: the oldest, when none is out and
    /// no retry pause is running. It counts as out until answered.
    pub fn next(&mut self, now: Millis) -> Option<(u64, T)> {
        if self.sending.is_some() || self.retry_at.is_some_and(|at| at > now) {
            return None;
        }
        let (&id, item) = self.entries.iter().next()?;
        self.sending = Some(id);
        self.retry_at = None;
        Some((id, item.clone()))
    }

    /// The receiver took entry `id`: it leaves the outbox. Returns whether
    /// it was there (the adapter deletes it from storage then).
    pub fn delivered(&mut self, id: u64) -> bool {
        if self.sending == Some(id) {
            self.sending = None;
        }
        self.entries.remove(&id).is_some()
    }

    /// Entry `id` could not be delivered: it stays, and the outbox pauses
    /// for [`RETRY_MS`] before trying again.
    pub fn undeliverable(&mut self, id: u64, now: Millis) {
        if self.sending == Some(id) {
            self.sending = None;
            self.retry_at = Some(now.saturating_add(RETRY_MS));
        }
    }

    /// An entry that was out for delivery is no longer (its delivery was
    /// lost with the object's instance): it goes out again.
    pub fn forget_sending(&mut self) {
        self.sending = None;
    }

    /// When the outbox must be woken to try again, if it waits for that.
    pub fn wake_at(&self) -> Option<Millis> {
        if self.entries.is_empty() || self.sending.is_some() {
            return None;
        }
        self.retry_at
    }

    /// Whether every entry was delivered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries waiting (one of them may be out).
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_go_out_one_at_a_time_in_order() {
        let mut o = Outbox::default();
        assert_eq!((o.push("a"), o.push("b")), (1, 2));
        assert_eq!(o.next(0), Some((1, "a")));
        assert_eq!(o.next(0), None, "the next waits for the answer");
        assert!(o.delivered(1));
        assert_eq!(o.next(0), Some((2, "b")));
        assert!(o.delivered(2));
        assert!(o.is_empty());
        assert_eq!(o.next(0), None);
        assert_eq!(o.wake_at(), None);
    }

    #[test]
    fn a_failed_delivery_pauses_and_retries_the_same_entry() {
        let mut o = Outbox::default();
        o.push("a");
        o.push("b");
        assert_eq!(o.next(10), Some((1, "a")));
        o.undeliverable(1, 10);
        assert_eq!(o.wake_at(), Some(10 + RETRY_MS));
        assert_eq!(o.next(10 + RETRY_MS - 1), None, "paused");
        assert_eq!(o.next(10 + RETRY_MS), Some((1, "a")), "same id again");
        assert_eq!(o.wake_at(), None, "out: nothing to wake for");
        assert!(o.delivered(1));
        assert_eq!(o.next(10 + RETRY_MS), Some((2, "b")));
    }

    #[test]
    fn stored_entries_keep_their_ids_and_new_ones_follow() {
        let mut o = Outbox::restore([(7, "x"), (4, "w")], 3);
        assert_eq!(o.len(), 2);
        assert_eq!(o.push("y"), 8);
        assert_eq!(Outbox::restore([], 9).push("z"), 10, "no id given twice");
        assert_eq!(o.next(0), Some((4, "w")));
        o.forget_sending();
        assert_eq!(o.next(0), Some((4, "w")), "a lost delivery goes out again");
        assert!(!o.delivered(99), "an unknown id changes nothing");
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn stale_answers_change_nothing() {
        let mut o = Outbox::default();
        o.push("a");
        o.push("b");
        assert_eq!(o.next(0), Some((1, "a")));
        o.undeliverable(2, 0);
        assert_eq!(o.wake_at(), None, "entry 2 was not out");
        assert!(o.delivered(1));
        assert_eq!(o.next(0), Some((2, "b")));
    }
}
