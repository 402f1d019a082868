//! A few connections of one reader, each request taking one that is free: the API's requests
//! read side by side (a year's balance does not hold up a page's other requests or another
//! user's). Both backends' readers hold one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// Connections a reader keeps, at most.
pub const READ_CONNECTIONS: usize = 4;

/// The first connection is opened by whoever makes the pool (so that a bad path or URL fails at
/// start); the others when requests first overlap.
pub struct Pool<T> {
    slots: Vec<Mutex<Option<T>>>,
    /// Which slot a request waits for when every one is busy (in turn).
    next: AtomicUsize,
}

impl<T> Pool<T> {
    pub fn new(first: T) -> Pool<T> {
        Pool {
            slots: std::iter::once(Some(first))
                .chain((1..READ_CONNECTIONS).map(|_| None))
                .map(Mutex::new)
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A free slot's connection (`Some`), opened by `open` where it has none yet or where
    /// `usable` says the one it has is not (a session the server closed).
    pub fn get(
        &self,
        open: impl FnOnce() -> anyhow::Result<T>,
        usable: impl Fn(&T) -> bool,
    ) -> anyhow::Result<MutexGuard<'_, Option<T>>> {
        let mut slot = self.slot();
        if !slot.as_ref().is_some_and(usable) {
            *slot = Some(open()?);
        }
        Ok(slot)
    }

    /// A free slot, or, when every one is busy, the next in turn once it is free.
    fn slot(&self) -> MutexGuard<'_, Option<T>> {
        for slot in &self.slots {
            match slot.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => panic!("reader lock poisoned"),
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].lock().expect("reader lock poisoned")
    }

    /// Every connection opened, taken out (a reader closing them).
    pub fn take_all(&mut self) -> impl Iterator<Item = T> + '_ {
        self.slots
            .iter_mut()
            .filter_map(|s| s.get_mut().ok().and_then(Option::take))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(n: i32) -> impl FnOnce() -> anyhow::Result<i32> {
        move || Ok(n)
    }

    #[test]
    fn a_busy_slot_is_passed_over_opened_when_first_needed_and_all_busy_waits_in_turn() {
        let pool = Pool::new(1);
        let a = pool.get(open(0), |_| true).unwrap();
        let b = pool.get(open(2), |_| true).unwrap();
        assert_eq!(
            (*a, *b),
            (Some(1), Some(2)),
            "the busy one passed over, the next opened"
        );
        drop(a);
        assert_eq!(
            *pool.get(open(0), |_| true).unwrap(),
            Some(1),
            "kept, not reopened"
        );
        assert_eq!(
            *pool.get(open(5), |&n| n != 1).unwrap(),
            Some(5),
            "one no longer usable is reopened"
        );
        // Every slot busy: a request waits for one and gets it once it is let go.
        let held: Vec<_> = (0..READ_CONNECTIONS - 1)
            .map(|k| pool.get(open(10 + k as i32), |_| true).unwrap())
            .collect();
        std::thread::scope(|s| {
            let waiting = s.spawn(|| *pool.get(open(0), |_| true).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(b);
            drop(held);
            assert!(waiting.join().unwrap().is_some());
        });
    }
}
