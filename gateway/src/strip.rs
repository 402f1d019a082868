//! Each device's data quality hour by hour, the strip the data-quality page draws: how many
//! messages came, how many of their samples were good and how many bad by code, how much of the
//! hour its accounted points' good readings covered, and whether any of their energy was
//! estimated over a gap. Pure: the API reads the messages and slots and hands them here.

use std::collections::BTreeMap;

use ems_core::Quality;
use ems_energy::counter::PointSlot;
use serde::Serialize;

/// One device's hours.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceStrip {
    pub device: String,
    pub hours: Vec<StripHour>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StripHour {
    /// The hour's start, ms since the epoch.
    pub start_ms: i64,
    pub state: State,
    pub messages: u32,
    pub good: u32,
    /// Samples of each bad quality (`timeout`, `exception:02`, `comm`, `crc`, `decode`).
    pub bad: BTreeMap<String, u32>,
    /// The code a bad hour is drawn in: its most frequent bad quality (on a tie, the first by
    /// name); none for an hour that is not bad.
    pub code: Option<String>,
    /// The least share of the hour any of its accounted points' good readings covered; null
    /// for a device no figure is drawn from.
    pub covered: Option<f64>,
    /// Some accounted energy of the hour was spread over a gap (a restart, a jump, a long
    /// interval), so is estimated.
    pub estimated: bool,
}

/// What one cell of the strip says, the worst first: nothing came, something came bad,
/// something was estimated, all good; or the hour ended before the device's first reading
/// (nothing was owed yet).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Before,
    Missing,
    Bad,
    Estimated,
    Good,
}

/// The strip of `device` over `hours` (each `[start, end)`, in order), from its messages (poll
/// time and the qualities of its samples, in any order), the 15-minute slots of each of its
/// accounted points, and when its record begins (`first_ms`: its points' first slot, if known).
pub fn strip(
    device: &str,
    hours: &[(i64, i64)],
    messages: &[(i64, Vec<Quality>)],
    points: &[Vec<(i64, PointSlot)>],
    first_ms: Option<i64>,
) -> DeviceStrip {
    let hours = hours
        .iter()
        .map(|&(start, end)| {
            let (mut count, mut good) = (0u32, 0u32);
            let mut bad = BTreeMap::new();
            for (_, qualities) in messages.iter().filter(|(t, _)| (start..end).contains(t)) {
                count += 1;
                for q in qualities {
                    if q.is_good() {
                        good += 1;
                    } else {
                        *bad.entry(q.to_string()).or_insert(0) += 1;
                    }
                }
            }
            let in_hour = |slots: &Vec<(i64, PointSlot)>| {
                slots
                    .iter()
                    .filter(|(t, _)| (start..end).contains(t))
                    .map(|(_, s)| *s)
                    .collect::<Vec<_>>()
            };
            let covered = points
                .iter()
                .map(|slots| {
                    in_hour(slots).iter().map(|s| s.covered_ms).sum::<i64>() as f64
                        / (end - start) as f64
                })
                .reduce(f64::min);
            let estimated = points
                .iter()
                .any(|slots| in_hour(slots).iter().any(|s| s.estimated != 0.0));
            let state = if count == 0 && first_ms.is_some_and(|first| end <= first) {
                State::Before
            } else if count == 0 {
                State::Missing
            } else if !bad.is_empty() {
                State::Bad
            } else if estimated {
                State::Estimated
            } else {
                State::Good
            };
            let code = (state == State::Bad)
                .then(|| {
                    bad.iter()
                        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                        .map(|(code, _)| code.clone())
                })
                .flatten();
            StripHour {
                start_ms: start,
                state,
                messages: count,
                good,
                bad,
                code,
                covered: covered.map(|c| c.clamp(0.0, 1.0)),
                estimated,
            }
        })
        .collect();
    DeviceStrip {
        device: device.to_owned(),
        hours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn slot(covered_ms: i64, estimated: f64) -> PointSlot {
        PointSlot {
            delta: 1.0,
            covered_ms,
            estimated,
        }
    }

    #[test]
    fn each_hour_says_the_worst_of_what_came() {
        let hours = [(0, H), (H, 2 * H), (2 * H, 3 * H), (3 * H, 4 * H)];
        let good = vec![Quality::Good, Quality::Good];
        let messages = vec![
            // Hour 0: two good messages.
            (60_000, good.clone()),
            (120_000, good.clone()),
            // Hour 1: one good, one with a timeout and an exception 02.
            (H + 1, good.clone()),
            (H + 2, vec![Quality::Good, Quality::Timeout]),
            (H + 3, vec![Quality::Exception(2), Quality::Timeout]),
            // Hour 2: nothing. Hour 3: good, but its energy was estimated over the gap.
            (3 * H + 5, good.clone()),
        ];
        let quarter = H / 4;
        let points = vec![vec![
            (0, slot(quarter, 0.0)),
            (quarter, slot(quarter, 0.0)),
            (2 * quarter, slot(quarter, 0.0)),
            (3 * quarter, slot(quarter, 0.0)),
            (H, slot(quarter, 0.0)),
            (3 * H, slot(0, 4.0)),
        ]];
        let s = strip("m1", &hours, &messages, &points, Some(0));
        let states: Vec<State> = s.hours.iter().map(|h| h.state).collect();
        assert_eq!(
            states,
            [State::Good, State::Bad, State::Missing, State::Estimated]
        );
        let bad = &s.hours[1];
        assert_eq!((bad.messages, bad.good), (3, 3));
        assert_eq!(
            bad.bad,
            BTreeMap::from([("exception:02".into(), 1), ("timeout".into(), 2)])
        );
        assert_eq!(
            bad.code.as_deref(),
            Some("timeout"),
            "drawn in its commonest code"
        );
        assert_eq!(s.hours[0].code, None);
        assert_eq!(s.hours[0].covered, Some(1.0));
        assert_eq!(s.hours[1].covered, Some(0.25));
        assert_eq!(s.hours[2].covered, Some(0.0));
        assert!(s.hours[3].estimated);
    }

    #[test]
    fn a_bad_hour_is_drawn_in_its_commonest_code_and_a_tie_in_the_first_by_name() {
        let hours = [(0, H), (H, 2 * H)];
        let messages = vec![
            (1, vec![Quality::Comm, Quality::Crc]),
            (2, vec![Quality::Crc, Quality::Good]),
            (H + 1, vec![Quality::Exception(4), Quality::Decode]),
        ];
        let s = strip("m1", &hours, &messages, &[], Some(0));
        let codes: Vec<Option<&str>> = s.hours.iter().map(|h| h.code.as_deref()).collect();
        assert_eq!(codes, [Some("crc"), Some("decode")]);
    }

    #[test]
    fn hours_before_the_devices_first_reading_owe_nothing() {
        let hours = [(0, H), (H, 2 * H), (2 * H, 3 * H)];
        let messages = vec![(2 * H + 5, vec![Quality::Good])];
        let s = strip("m1", &hours, &messages, &[], Some(H + H / 2));
        let states: Vec<State> = s.hours.iter().map(|h| h.state).collect();
        // The hour it began in owed the rest of itself: missing.
        assert_eq!(states, [State::Before, State::Missing, State::Good]);
    }

    #[test]
    fn a_device_without_accounted_points_has_no_coverage() {
        let s = strip("plc", &[(0, H)], &[(5, vec![Quality::Good])], &[], None);
        assert_eq!(s.hours[0].covered, None);
        assert_eq!(s.hours[0].state, State::Good);
    }
}
