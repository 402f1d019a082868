//! How often one device may write a warning. Pure.
//!
//! A meter that fails every poll would write a line a second to the board's flash and bury
//! what matters in the journal. Its first failure is told at once; the next ones within the
//! window are only counted (the metrics count every failed point by kind), and the first line
//! after the window says how many were held back.

use std::time::{Duration, Instant};

/// One warning a device at most this often.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone)]
pub struct LogLimit {
    last: Option<Instant>,
    held_back: u64,
}

impl LogLimit {
    /// Whether to write this warning at `now`: if so, with how many were held back before it.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < WINDOW => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_device_writes_one_line_a_minute_saying_how_many_it_held_back() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.allow(at(0)), Some(0), "the first failure is told at once");
        let held: Vec<_> = (1..60).map(|s| l.allow(at(s))).collect();
        assert!(held.iter().all(Option::is_none));
        assert_eq!(l.allow(at(60)), Some(59));
        assert_eq!(l.allow(at(61)), None);
        assert_eq!(l.allow(at(500)), Some(1));
    }
}
