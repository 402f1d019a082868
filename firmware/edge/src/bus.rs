//! Fairness on a shared bus: whose turn each poll cycle is. Pure: the link loop asks which
//! devices to poll this cycle and tells how each poll went.
//!
//! A device whose poll fails (nothing came back good) backs off at once: it skips 1, 3, 7 ...
//! cycles, up to a bound, each wait stretched by up to a quarter so that devices that failed
//! together do not all come back together. Every healthy device is polled every cycle; of the
//! backed-off devices whose wait is over, one a cycle is tried, in turn, and only while the
//! cycle's time lasts, so that six dead meters cost a healthy one on their bus at most one
//! timeout a cycle.

use std::time::Duration;

use crate::link::Wait;

/// One device's backoff.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    /// Cycles still to skip.
    skip: u64,
    /// Spreads the waits of devices that failed together.
    seed: u64,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            seed,
            ..Backoff::default()
        }
    }

    /// Polled less often at the moment: its last poll failed.
    pub fn backing_off(&self) -> bool {
        self.failures > 0
    }

    /// Still waiting out its backoff.
    pub fn waiting(&self) -> bool {
        self.skip > 0
    }

    /// A cycle went by without it.
    fn tick(&mut self) {
        self.skip = self.skip.saturating_sub(1);
    }

    /// Records a poll; returns the cycles it will now skip, when that changed.
    pub fn record(&mut self, ok: bool, max_skip: u64) -> Option<u64> {
        if ok {
            let was = self.backing_off();
            *self = Backoff::new(self.seed);
            return was.then_some(0);
        }
        self.failures = self.failures.saturating_add(1);
        let base = ((1u64 << self.failures.min(32)) - 1).min(max_skip.max(1));
        // A quarter at most, from a hash of the device and its failure count.
        let jitter = splitmix(self.seed ^ u64::from(self.failures)) % (base / 4 + 1);
        self.skip = base + jitter;
        Some(self.skip)
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whose turn it is among the backed-off devices of one bus.
#[derive(Debug, Default, Clone)]
pub struct Turns {
    next: usize,
    /// Cycles the current retry was put off because the healthy devices took the cycle's time.
    deferred: u32,
}

/// After this many cycles put off, a retry is made whatever the cycle's time: a bus whose
/// healthy devices alone take longer than the poll interval must still look at its dead ones.
const MAX_DEFERRED: u32 = 3;

/// This cycle's devices, in the order to poll them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// Every device not backing off.
    pub healthy: Vec<usize>,
    /// The one backed-off device tried this cycle, if its wait is over, after the healthy
    /// ones and only if the cycle's time is not spent (see [`Turns::deferred`]) ...
    pub retry: Option<usize>,
    /// ... unless it was put off too often already: then it is tried anyway.
    pub forced: bool,
}

impl Turns {
    /// The devices to poll this cycle; every backed-off device's wait goes on by one cycle.
    pub fn cycle(&mut self, backoffs: &mut [Backoff]) -> Cycle {
        let n = backoffs.len();
        let healthy = (0..n).filter(|&i| !backoffs[i].backing_off()).collect();
        let retry = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| backoffs[i].backing_off() && !backoffs[i].waiting());
        if let Some(i) = retry {
            // Its turn passes only once it was tried (see `deferred`).
            self.next = (i + 1) % n;
        }
        for b in backoffs.iter_mut().filter(|b| b.backing_off()) {
            b.tick();
        }
        let forced = retry.is_some() && self.deferred >= MAX_DEFERRED;
        if retry.is_none() || forced {
            self.deferred = 0;
        }
        Cycle {
            healthy,
            retry,
            forced,
        }
    }

    /// The retry of the last cycle was not made (no time left): it comes first next time.
    pub fn deferred(&mut self, device: usize) {
        self.next = device;
        self.deferred += 1;
    }
}

/// A device's answer times, and the first try's timeout fitted to them: three times the
/// slowest of its last [`KEPT`] first-try answers and 50 ms, within the device's bounds. A dead
/// meter then costs its bus a few of its usual answer times a try, not a whole second; a slow
/// answer past the fit is caught by the retry, which waits twice as long.
///
/// Kept as whole microseconds in a fixed ring: a site of thousands of devices holds one each
/// (128 bytes where a queue of `Duration`s took over 500).
#[derive(Debug, Default, Clone)]
pub struct TimeoutFit {
    recent_us: [u32; KEPT],
    /// Answers kept (up to [`KEPT`]), and where the next one goes.
    kept: u8,
    next: u8,
}

/// First-try answers a fit is drawn from.
pub const KEPT: usize = 32;
/// Answers seen before the first try waits less than the device's longest timeout.
const BEFORE_FITTING: usize = 8;

impl TimeoutFit {
    /// An answer that came on its request's first try, after `took`.
    pub fn answered(&mut self, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        self.recent_us[usize::from(self.next)] = us;
        self.next = ((usize::from(self.next) + 1) % KEPT) as u8;
        self.kept = (usize::from(self.kept) + 1).min(KEPT) as u8;
    }

    /// How long each try of the next request waits, between `least` and `most`.
    pub fn wait(&self, least: Duration, most: Duration) -> Wait {
        let kept = &self.recent_us[..usize::from(self.kept)];
        let first = match kept.iter().max() {
            Some(&slowest) if kept.len() >= BEFORE_FITTING => {
                (Duration::from_micros(u64::from(slowest)) * 3 + Duration::from_millis(50))
                    .clamp(least, most)
            }
            _ => most,
        };
        Wait { first, most }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_device_backs_off_at_once_with_its_own_jitter_and_comes_back_at_once() {
        let mut b = Backoff::new(7);
        let mut waits = Vec::new();
        for _ in 0..6 {
            waits.push(b.record(false, 60).unwrap());
        }
        // 1, 3, 7, 15, 31, 60 cycles, each stretched by up to a quarter.
        for (w, base) in waits.iter().zip([1u64, 3, 7, 15, 31, 60]) {
            assert!((base..=base + base / 4).contains(w), "{waits:?}");
        }
        assert_eq!(b.record(true, 60), Some(0), "back at once");
        assert!(!b.backing_off() && !b.waiting());
        assert_eq!(b.record(true, 60), None);
        // Devices that failed together wait apart.
        let spread: std::collections::BTreeSet<u64> = (0..16)
            .map(|seed| {
                let mut b = Backoff::new(seed);
                (0..5).map(|_| b.record(false, 60).unwrap()).last().unwrap()
            })
            .collect();
        assert!(spread.len() > 3, "{spread:?}");
    }

    #[test]
    fn healthy_devices_every_cycle_and_one_backed_off_device_a_cycle_in_turn() {
        let mut backoffs: Vec<Backoff> = (0..5).map(Backoff::new).collect();
        // Devices 1, 2 and 3 fail once: each waits a cycle, then they are tried one a cycle.
        for i in [1, 2, 3] {
            backoffs[i].record(false, 60);
        }
        let mut turns = Turns::default();
        let first = turns.cycle(&mut backoffs);
        assert_eq!(
            first,
            Cycle {
                healthy: vec![0, 4],
                retry: None,
                forced: false
            },
            "their first wait"
        );
        let mut tried = Vec::new();
        for _ in 0..3 {
            let c = turns.cycle(&mut backoffs);
            assert_eq!(c.healthy, vec![0, 4]);
            tried.push(c.retry.unwrap());
        }
        assert_eq!(tried, vec![1, 2, 3], "one at a time, in turn");
        // A bus whose healthy devices take the whole cycle: the retry is put off, then made.
        let mut slow: Vec<Backoff> = (0..3).map(Backoff::new).collect();
        slow[1].record(false, 0);
        let mut turns = Turns::default();
        let mut made = None;
        for cycle in 0..6 {
            let c = turns.cycle(&mut slow);
            match c.retry {
                Some(i) if c.forced => {
                    made = Some((cycle, i));
                    break;
                }
                Some(i) => turns.deferred(i),
                None => {}
            }
        }
        assert_eq!(made.map(|m| m.1), Some(1), "{made:?}");
        assert!(made.unwrap().0 >= 3, "put off three cycles first: {made:?}");
        // Device 2 answers: healthy again.
        backoffs[2].record(true, 60);
        assert!(turns.cycle(&mut backoffs).healthy.contains(&2));
    }

    #[test]
    fn the_first_try_waits_three_slowest_answers_within_bounds_and_retries_wait_longer() {
        let (least, most) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut fit = TimeoutFit::default();
        for _ in 0..BEFORE_FITTING - 1 {
            fit.answered(Duration::from_millis(40));
        }
        assert_eq!(fit.wait(least, most).first, most, "too few answers to fit");
        fit.answered(Duration::from_millis(60));
        let w = fit.wait(least, most);
        assert_eq!(w.first, Duration::from_millis(230));
        assert_eq!(
            (0..4)
                .map(|n| w.try_number(n).as_millis())
                .collect::<Vec<_>>(),
            [230, 460, 920, 1000]
        );
        // A quick device waits no less than the floor; a slow one no more than its timeout.
        let mut quick = TimeoutFit::default();
        let mut slow = TimeoutFit::default();
        for _ in 0..KEPT {
            quick.answered(Duration::from_millis(5));
            slow.answered(Duration::from_millis(900));
        }
        assert_eq!(quick.wait(least, most).first, least);
        assert_eq!(slow.wait(least, most).first, most);
        // The slowest answer counts for its last KEPT answers, then no more.
        let mut fit = TimeoutFit::default();
        fit.answered(Duration::from_millis(300));
        for _ in 0..KEPT - 1 {
            fit.answered(Duration::from_millis(10));
        }
        assert_eq!(fit.wait(least, most).first, Duration::from_millis(950));
        fit.answered(Duration::from_millis(10));
        assert_eq!(fit.wait(least, most).first, least);
    }
}
