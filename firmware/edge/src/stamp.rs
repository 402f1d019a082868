//! The time a reading is stamped with. Pure.
//!
//! A meter read on its own clock (`clock = "device"`) is stamped with that clock. When a poll
//! could not read the clock (a timeout, a corrupt answer), the stamp stays on the meter's time
//! base: its last clock read carried forward by the system's clock, at the rate the meter's
//! clock was seen to run against it (1 until ten seconds of reads show otherwise: a
//! simulated plant's meters run at its speed). Falling back to the system's own time would put
//! that one reading minutes or hours off its neighbours whenever the meter's clock is (a gap,
//! then a reading "late" or "from the future").
//!
//! Before the meter's clock has been read at all there is no time base to carry: such a poll is
//! sent on the system's time with its values withheld ([`place`]), never guessed onto it. A
//! counter loses nothing by it (its next reading carries the whole advance).

use ems_core::wire::PointValue;
use ems_core::Quality;

/// One meter's clock as seen against the system's.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct MeterClock {
    /// The first read of the meter's clock since it last jumped: (system ms, meter ms).
    anchor: Option<(i64, i64)>,
    /// The latest read.
    last: Option<(i64, i64)>,
}

/// System time the reads must span before the meter's rate is taken from them (meter clocks
/// often tell whole seconds only).
const RATE_AFTER_MS: i64 = 10_000;

impl MeterClock {
    /// The stamp of a poll made at `system_ms` whose clock read gave `t`: `t` itself, kept as
    /// the time base later polls are carried on.
    pub fn read(&mut self, t: i64, system_ms: i64) -> i64 {
        // A clock set or stepped: measure its rate afresh. Told by a step back, or, once its
        // rate is known, by a read far from where the rate would have it.
        let stepped = match (self.last, self.rate()) {
            (None, _) => true,
            (Some(l), _) if t < l.1 => true,
            (Some(l), Some(rate)) => {
                let advance = (system_ms - l.0) as f64 * rate;
                let expected = l.1 as f64 + advance;
                (t as f64 - expected).abs() > 5_000.0 + advance.abs() / 10.0
            }
            (Some(_), None) => false,
        };
        if stepped {
            self.anchor = Some((system_ms, t));
        }
        self.last = Some((system_ms, t));
        t
    }

    /// Meter milliseconds a system millisecond, once the reads span long enough to tell.
    fn rate(&self) -> Option<f64> {
        let ((a_sys, a_meter), (sys, meter)) = (self.anchor?, self.last?);
        (sys - a_sys >= RATE_AFTER_MS).then(|| (meter - a_meter) as f64 / (sys - a_sys) as f64)
    }

    /// The stamp of a poll made at `system_ms` that could not read the clock: the meter's time
    /// by its last read and rate; `None` before the clock was ever read.
    pub fn carried(&self, system_ms: i64) -> Option<i64> {
        let (sys, meter) = self.last?;
        let rate = self.rate().unwrap_or(1.0);
        Some(meter + ((system_ms - sys) as f64 * rate).round() as i64)
    }
}

/// Places a poll of a meter read on its own clock (`clock` is the clock read's outcome): its
/// stamp, and whether its values were withheld. Until the meter's clock has been read once, a
/// poll whose clock read failed keeps its points but not their values, each with the clock
/// read's failure, on the system's time: stamped there, a reading can sit hours off the
/// meter's own (its energy accounted in the wrong slots, the meter's next readings "late"
/// behind it).
pub fn place(
    meter: &mut MeterClock,
    clock: Result<i64, Quality>,
    points: &mut [PointValue],
    system_ms: i64,
) -> (i64, bool) {
    let failure = match clock {
        Ok(t) => return (meter.read(t, system_ms), false),
        Err(failure) => failure,
    };
    if let Some(stamp) = meter.carried(system_ms) {
        return (stamp, false);
    }
    for p in points.iter_mut() {
        p.v = None;
        if p.q.is_good() {
            p.q = failure;
        }
    }
    (system_ms, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_without_its_clock_read_stays_on_the_meters_time() {
        let mut c = MeterClock::default();
        assert_eq!(c.carried(1_000_000), None, "never read: no time");
        // The meter runs four hours behind the system.
        let behind = 4 * 3_600_000;
        assert_eq!(c.read(2_000_000 - behind, 2_000_000), 2_000_000 - behind);
        assert_eq!(c.carried(2_001_000), Some(2_001_000 - behind));
        // A new clock read moves it on.
        assert_eq!(c.read(2_002_000 - behind, 2_002_500), 2_002_000 - behind);
        assert_eq!(c.carried(2_003_500), Some(2_003_000 - behind));
    }

    #[test]
    fn a_meter_clock_running_at_another_rate_is_carried_forward_at_its_rate() {
        // A simulated plant at 60x: a minute of meter time each system second.
        let mut c = MeterClock::default();
        for s in 0..=15 {
            c.read(5_000_000 + s * 60_000, 1_000_000 + s * 1_000);
        }
        assert_eq!(c.carried(1_016_000), Some(5_000_000 + 16 * 60_000));
        // Its clock is set back an hour: the old rate is not trusted across the step.
        c.read(5_000_000, 1_017_000);
        assert_eq!(c.carried(1_018_000), Some(5_001_000));
    }

    #[test]
    fn a_poll_before_the_meters_clock_was_ever_read_is_sent_without_its_values() {
        let point = |id: &str, v: Option<f64>, q| PointValue {
            id: id.into(),
            v,
            q,
        };
        let polled = || {
            vec![
                point("total", Some(1_234.5), Quality::Good),
                point("power", None, Quality::Crc),
            ]
        };
        // The meter runs four hours behind the board; its clock read times out at first.
        let behind = 4 * 3_600_000;
        let mut c = MeterClock::default();
        let mut points = polled();
        assert_eq!(
            place(&mut c, Err(Quality::Timeout), &mut points, 1_000_000),
            (1_000_000, true)
        );
        assert_eq!(
            points,
            [
                point("total", None, Quality::Timeout),
                point("power", None, Quality::Crc)
            ]
        );
        // Once read, the clock stamps; a later failed read is carried on the meter's time,
        // values kept.
        let mut points = polled();
        assert_eq!(
            place(&mut c, Ok(1_001_000 - behind), &mut points, 1_001_000),
            (1_001_000 - behind, false)
        );
        assert_eq!(points, polled());
        let mut points = polled();
        assert_eq!(
            place(&mut c, Err(Quality::Timeout), &mut points, 1_002_000),
            (1_002_000 - behind, false)
        );
        assert_eq!(points, polled());
    }
}
