//! State that outlives config snapshots: DNS caches, circuit breakers, limit counters.
//!
//! A snapshot holds `Arc`s to these objects; the registry holds `Weak`s by key. A reload
//! that names the same key (and, where it matters, the same settings) gets the same
//! object, so a cache stays warm, an open breaker stays open and a spent budget stays
//! spent. Objects no snapshot uses any more are dropped with the snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

pub struct Kept<T> {
    entries: Mutex<HashMap<String, Weak<T>>>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Kept<T> {
    /// The live object for `key` if `reuse` accepts it, else a new one from `make`.
    /// Config-load time only; never called per request.
    pub fn get(
        &self,
        key: &str,
        reuse: impl FnOnce(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        match self.try_get(key, reuse, || Ok::<T, std::convert::Infallible>(make())) {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }

    /// [`Self::get`] with a `make` that can fail (nothing is kept then).
    pub fn try_get<E>(
        &self,
        key: &str,
        reuse: impl FnOnce(&T) -> bool,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut map = match self.entries.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(live) = map.get(key).and_then(Weak::upgrade) {
            if reuse(&live) {
                return Ok(live);
            }
        }
        let fresh = Arc::new(make()?);
        map.insert(key.to_string(), Arc::downgrade(&fresh));
        Ok(fresh)
    }
}
