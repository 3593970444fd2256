//! Client idempotency ids, scoped to their user: `(user, id)` names one
//! point. The core keeps a bounded cache of recent ids; anything older is
//! looked up in the object's storage (an index on `(user_id, client_id)`),
//! so waking a session never loads every id.

use std::collections::{HashMap, VecDeque};

/// Looks up the seq of a stored point by its user and client id.
pub trait IdLookup {
    /// The seq of the stored point `(user, id)`, if there is one.
    fn seq_of(&mut self, user: &str, id: &str) -> Option<u64>;
}

/// A lookup that knows no ids (a new session, or tests).
pub struct NoIds;

impl IdLookup for NoIds {
    fn seq_of(&mut self, _user: &str, _id: &str) -> Option<u64> {
        None
    }
}

/// The key of a client id.
pub type IdKey = (String, String);

/// Recently used ids, evicted oldest first beyond `capacity`.
#[derive(Debug, Default)]
pub struct IdCache {
    map: HashMap<IdKey, u64>,
    order: VecDeque<IdKey>,
    capacity: usize,
}

impl IdCache {
    /// An empty cache of at most `capacity` ids.
    pub fn new(capacity: usize) -> IdCache {
        IdCache {
            capacity: capacity.max(1),
            ..IdCache::default()
        }
    }

    /// The cached seq of `(user, id)`.
    pub fn get(&self, user: &str, id: &str) -> Option<u64> {
        // A borrowed tuple key would need a custom Borrow impl; ids are
        // short, and this runs once per point.
        self.map.get(&(user.to_owned(), id.to_owned())).copied()
    }

    /// Notes a stored id.
    pub fn insert(&mut self, key: IdKey, seq: u64) {
        if self.map.insert(key.clone(), seq).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    /// Number of cached ids.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
