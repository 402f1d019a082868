//! A few connections of one reader, each request taking one that is free: the API's requests
//! read side by side (a year's balance does not hold up a page's other requests or another
//! user's). Both backends' readers hold one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// Connections a reader keeps.
pub const READ_CONNECTIONS: usize = 4;

pub struct Pool<T> {
    slots: Vec<Mutex<T>>,
    /// Which slot a request waits for when every one is busy (in turn).
    next: AtomicUsize,
}

impl<T> Pool<T> {
    pub fn new(slots: impl IntoIterator<Item = T>) -> Pool<T> {
        let slots: Vec<Mutex<T>> = slots.into_iter().map(Mutex::new).collect();
        assert!(!slots.is_empty(), "a pool of no connections");
        Pool {
            slots,
            next: AtomicUsize::new(0),
        }
    }

    /// A free slot, or, when every one is busy, the next in turn once it is free.
    pub fn get(&self) -> MutexGuard<'_, T> {
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

    /// Every slot (a reader closing its connections).
    pub fn slots_mut(&mut self) -> Vec<&mut T> {
        self.slots
            .iter_mut()
            .filter_map(|s| s.get_mut().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_slot_is_passed_over_and_all_busy_waits_in_turn() {
        let pool = Pool::new([1, 2]);
        let a = pool.get();
        let b = pool.get();
        assert_eq!((*a, *b), (1, 2), "the free one is taken, not the busy one");
        drop(a);
        assert_eq!(*pool.get(), 1);
        // Both busy: a request waits for one and gets it once it is let go.
        let a = pool.get();
        std::thread::scope(|s| {
            let waiting = s.spawn(|| *pool.get());
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(a);
            drop(b);
            assert!([1, 2].contains(&waiting.join().unwrap()));
        });
    }
}
