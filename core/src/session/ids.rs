//! Client idempotency ids, scoped to their user: `(user, id)` names one
//! point. The core keeps a bounded cache of recent ids; anything older is
//! looked up in the object's storage (an index on `(user_id, client_id)`),
//! so waking a session never loads every id. While every id in storage was
//! stored in this object's lifetime (a session created here, or woken
//! empty), a Bloom filter of those ids answers "surely new" without asking
//! storage: a fresh id, the common case, costs no lookup.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

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
    // Every id stored since storage last held an id not in it; `None` once
    // that is not known (woken with points) or it grew past `SEEN_MAX`.
    seen: Option<Seen>,
}

/// Ids beyond which the filter is dropped (about 1.5 MB of bits) and every
/// uncached id is looked up again.
const SEEN_MAX: usize = 1 << 20;

impl IdCache {
    /// An empty cache of at most `capacity` ids. `storage_empty`: storage
    /// holds no id yet, so the filter can vouch for new ones.
    pub fn new(capacity: usize, storage_empty: bool) -> IdCache {
        IdCache {
            capacity: capacity.max(1),
            seen: storage_empty.then(Seen::default),
            ..IdCache::default()
        }
    }

    /// `(user, id)` is surely in no stored point: the filter knows every
    /// stored id and has not seen this one.
    pub fn surely_new(&self, user: &str, id: &str) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|s| !s.may_hold(key_hash(user, id)))
    }

    /// The cached seq of `(user, id)`.
    pub fn get(&self, user: &str, id: &str) -> Option<u64> {
        // A borrowed tuple key would need a custom Borrow impl; ids are
        // short, and this runs once per point.
        self.map.get(&(user.to_owned(), id.to_owned())).copied()
    }

    /// Notes a stored id.
    pub fn insert(&mut self, key: IdKey, seq: u64) {
        if let Some(seen) = &mut self.seen {
            seen.add(key_hash(&key.0, &key.1));
            if seen.len > SEEN_MAX {
                self.seen = None;
            }
        }
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

fn key_hash(user: &str, id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (user, id).hash(&mut h);
    h.finish()
}

/// A scalable Bloom filter: layers of 12 bits per id and 8 probes (about
/// 0.3% false "maybe" each), a new layer twice the size when the last is
/// full. A false "maybe" only costs a storage lookup; "absent" is exact.
#[derive(Debug, Default)]
struct Seen {
    layers: Vec<Layer>,
    len: usize,
}

#[derive(Debug)]
struct Layer {
    bits: Vec<u64>,
    cap: usize,
    len: usize,
}

const PROBES: u64 = 8;

impl Layer {
    fn new(cap: usize) -> Layer {
        Layer {
            bits: vec![0; (cap * 12).div_ceil(64)],
            cap,
            len: 0,
        }
    }

    /// The word and mask of each probe of `h` in `words` words (double
    /// hashing).
    fn probes(words: usize, h: u64) -> impl Iterator<Item = (usize, u64)> {
        let n = words as u64 * 64;
        let (a, b) = (h, h.rotate_left(32) | 1);
        (0..PROBES).map(move |i| {
            let bit = a.wrapping_add(i.wrapping_mul(b)) % n;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn has(&self, h: u64) -> bool {
        Layer::probes(self.bits.len(), h).all(|(w, m)| self.bits[w] & m != 0)
    }
}

impl Seen {
    fn may_hold(&self, h: u64) -> bool {
        self.layers.iter().any(|l| l.has(h))
    }

    fn add(&mut self, h: u64) {
        if self.may_hold(h) {
            return;
        }
        if self.layers.last().is_none_or(|l| l.len >= l.cap) {
            let cap = self.layers.last().map_or(1024, |l| l.cap * 2);
            self.layers.push(Layer::new(cap));
        }
        if let Some(l) = self.layers.last_mut() {
            for (w, m) in Layer::probes(l.bits.len(), h) {
                l.bits[w] |= m;
            }
            l.len += 1;
        }
        self.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_vouches_only_for_ids_it_never_saw() {
        let mut c = IdCache::new(4, true);
        for i in 0..5000 {
            c.insert(("u".into(), format!("p{i}")), i);
        }
        // Every stored id is "maybe", far beyond the cache's 4 entries.
        assert!((0..5000).all(|i| !c.surely_new("u", &format!("p{i}"))));
        assert!(!c.surely_new("u", "p42"));
        // Ids of another user, or new ones, are mostly vouched for.
        let fresh = (0..5000)
            .filter(|i| c.surely_new("v", &format!("p{i}")))
            .count();
        assert!(fresh > 4900, "{fresh}");
        // Woken with points in storage: no filter, every miss is looked up.
        let woken = IdCache::new(4, false);
        assert!(!woken.surely_new("u", "anything"));
    }
}
