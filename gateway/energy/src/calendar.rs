//! The plant's calendar: 15-minute slots, hours, shifts, days, months and years in its local
//! time, and how many of them a range holds before any is built.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone};
use serde::Serialize;

use crate::counter::{HOUR_MS, SLOT_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    #[serde(rename = "15min")]
    Quarter,
    Hour,
    Shift,
    Day,
    Month,
    Year,
}

/// The plant's time: its UTC offset and when its shifts start (ms after local midnight).
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    pub tz: FixedOffset,
    /// Sorted, each in `0..24 h`.
    pub shift_starts: Vec<i64>,
}

impl Calendar {
    /// The shift boundary at or before `ms`.
    fn shift_start(&self, ms: i64) -> i64 {
        let day = midnight(local(ms, self.tz).date_naive(), self.tz);
        [day - 24 * HOUR_MS, day]
            .iter()
            .flat_map(|d| self.shift_starts.iter().map(move |s| d + s))
            .filter(|&b| b <= ms)
            .max()
            .expect("a shift starts within a day of any time")
    }

    fn next_shift(&self, start: i64) -> i64 {
        let day = midnight(local(start, self.tz).date_naive(), self.tz);
        [day, day + 24 * HOUR_MS]
            .iter()
            .flat_map(|d| self.shift_starts.iter().map(move |s| d + s))
            .filter(|&b| b > start)
            .min()
            .expect("a shift starts within a day of any time")
    }
}

/// Period boundaries covering `[from_ms, to_ms)` in the plant's local time.
pub fn buckets(period: Period, from_ms: i64, to_ms: i64, cal: &Calendar) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut start = period_start(period, from_ms, cal);
    while start < to_ms {
        let end = next_start(period, start, cal);
        out.push((start, end));
        start = end;
    }
    out
}

/// At most how many periods [`buckets`] gives for `[from_ms, to_ms)`, computed without
/// building them: what a request is checked against before any work.
pub fn buckets_at_most(period: Period, from_ms: i64, to_ms: i64, cal: &Calendar) -> u64 {
    if to_ms <= from_ms {
        return 0;
    }
    let span = (to_ms as i128 - from_ms as i128) as u128;
    let per = |len: i64| (span / len as u128 + 2) as u64;
    let days = per(24 * HOUR_MS);
    let year_month = |ms: i64| {
        let d = local(ms, cal.tz);
        (i128::from(d.year()), i128::from(d.month()))
    };
    match period {
        Period::Quarter => per(SLOT_MS),
        Period::Hour => per(HOUR_MS),
        Period::Day => days,
        Period::Shift => days.saturating_mul(cal.shift_starts.len() as u64),
        Period::Month | Period::Year => {
            let ((y0, m0), (y1, m1)) = (year_month(from_ms), year_month(to_ms));
            let n = match period {
                Period::Month => (y1 * 12 + m1) - (y0 * 12 + m0) + 1,
                _ => y1 - y0 + 1,
            };
            n.max(0) as u64
        }
    }
}

/// A time in the plant's local offset, RFC 3339: how reports and the API write period bounds.
pub fn local_rfc3339(ms: i64, tz: FixedOffset) -> String {
    local(ms, tz).to_rfc3339()
}

pub(crate) fn local(ms: i64, tz: FixedOffset) -> DateTime<FixedOffset> {
    tz.timestamp_millis_opt(ms)
        .single()
        .expect("fixed offsets are unambiguous")
}

fn midnight(d: NaiveDate, tz: FixedOffset) -> i64 {
    tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
        .single()
        .expect("fixed offsets are unambiguous")
        .timestamp_millis()
}

fn period_start(period: Period, ms: i64, cal: &Calendar) -> i64 {
    let tz = cal.tz;
    let offset = i64::from(tz.local_minus_utc()) * 1000;
    match period {
        Period::Quarter => ms - (ms + offset).rem_euclid(SLOT_MS),
        Period::Hour => ms - (ms + offset).rem_euclid(HOUR_MS),
        Period::Shift => cal.shift_start(ms),
        Period::Year => midnight(
            NaiveDate::from_ymd_opt(local(ms, tz).year(), 1, 1).expect("1 January exists"),
            tz,
        ),
        Period::Day => midnight(local(ms, tz).date_naive(), tz),
        Period::Month => midnight(
            local(ms, tz)
                .date_naive()
                .with_day(1)
                .expect("day 1 exists"),
            tz,
        ),
    }
}

fn next_start(period: Period, start: i64, cal: &Calendar) -> i64 {
    let tz = cal.tz;
    match period {
        Period::Quarter => start + SLOT_MS,
        Period::Hour => start + HOUR_MS,
        Period::Shift => cal.next_shift(start),
        Period::Year => midnight(
            NaiveDate::from_ymd_opt(local(start, tz).year() + 1, 1, 1).expect("1 January exists"),
            tz,
        ),
        Period::Day => start + 24 * HOUR_MS,
        Period::Month => {
            let d = local(start, tz).date_naive();
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            midnight(
                NaiveDate::from_ymd_opt(y, m, 1).expect("first of month exists"),
                tz,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn days_and_months_start_at_local_midnight() {
        let cst: FixedOffset = "+08:00".parse().unwrap();
        let cal = Calendar {
            tz: cst,
            shift_starts: vec![0, 8 * HOUR_MS, 16 * HOUR_MS],
        };
        // 2026-01-31T20:00:00+08:00 .. 2026-02-02T00:00:00+08:00
        let from = cst
            .with_ymd_and_hms(2026, 1, 31, 20, 0, 0)
            .unwrap()
            .timestamp_millis();
        let to = cst
            .with_ymd_and_hms(2026, 2, 2, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let days = buckets(Period::Day, from, to, &cal);
        assert_eq!(days.len(), 2);
        assert_eq!(
            local(days[0].0, cst).to_rfc3339(),
            "2026-01-31T00:00:00+08:00"
        );
        let months = buckets(Period::Month, from, to, &cal);
        assert_eq!(months.len(), 2);
        assert_eq!(
            local(months[1].0, cst).to_rfc3339(),
            "2026-02-01T00:00:00+08:00"
        );
        assert_eq!(
            local(months[1].1, cst).to_rfc3339(),
            "2026-03-01T00:00:00+08:00"
        );
        let hours = buckets(Period::Hour, from + 1, from + HOUR_MS, &cal);
        assert_eq!(hours, vec![(from, from + HOUR_MS)]);
    }

    #[test]
    fn the_count_of_periods_is_known_before_they_are_built() {
        let cst: FixedOffset = "+08:00".parse().unwrap();
        let cal = Calendar {
            tz: cst,
            shift_starts: vec![0, 8 * HOUR_MS, 16 * HOUR_MS],
        };
        let at = |y, mo, d, h| {
            cst.with_ymd_and_hms(y, mo, d, h, 0, 0)
                .unwrap()
                .timestamp_millis()
        };
        for (from, to) in [
            (at(2026, 1, 31, 20), at(2026, 2, 2, 0)),
            (at(2025, 12, 31, 23), at(2026, 1, 1, 1)),
            (at(2024, 3, 5, 7), at(2026, 11, 17, 13)),
        ] {
            for p in [
                Period::Quarter,
                Period::Hour,
                Period::Shift,
                Period::Day,
                Period::Month,
                Period::Year,
            ] {
                let built = buckets(p, from, to, &cal).len() as u64;
                let bound = buckets_at_most(p, from, to, &cal);
                // An upper bound, and a close one (shifts are counted as whole days of them).
                assert!(
                    built <= bound && bound <= 2 * built + 6,
                    "{p:?}: {built} built, bound {bound}"
                );
            }
        }
        // A thousand years of 15-minute periods is refused on arithmetic alone.
        let (y0, y1) = (at(1000, 1, 1, 0), at(2000, 1, 1, 0));
        assert!(buckets_at_most(Period::Quarter, y0, y1, &cal) > 35_000_000);
    }

    #[test]
    fn quarters_shifts_and_years() {
        let cst: FixedOffset = "+08:00".parse().unwrap();
        // Shifts at 08:00, 16:00 and 00:00 local, written in any order.
        let cal = Calendar {
            tz: cst,
            shift_starts: vec![0, 8 * HOUR_MS, 16 * HOUR_MS],
        };
        let at = |d, h, m| {
            cst.with_ymd_and_hms(2026, 1, d, h, m, 0)
                .unwrap()
                .timestamp_millis()
        };
        let q = buckets(Period::Quarter, at(5, 10, 7), at(5, 10, 40), &cal);
        assert_eq!(
            q,
            vec![
                (at(5, 10, 0), at(5, 10, 15)),
                (at(5, 10, 15), at(5, 10, 30)),
                (at(5, 10, 30), at(5, 10, 45))
            ]
        );
        let s = buckets(Period::Shift, at(5, 7, 0), at(5, 17, 0), &cal);
        assert_eq!(
            s,
            vec![
                (at(5, 0, 0), at(5, 8, 0)),
                (at(5, 8, 0), at(5, 16, 0)),
                (at(5, 16, 0), at(6, 0, 0))
            ]
        );
        // A plant whose shifts start at 07:30, 15:30 and 23:30: the night shift spans midnight.
        let cal2 = Calendar {
            tz: cst,
            shift_starts: vec![
                7 * HOUR_MS + 1_800_000,
                15 * HOUR_MS + 1_800_000,
                23 * HOUR_MS + 1_800_000,
            ],
        };
        let night = buckets(Period::Shift, at(6, 2, 0), at(6, 3, 0), &cal2);
        assert_eq!(night, vec![(at(5, 23, 30), at(6, 7, 30))]);
        let y = buckets(Period::Year, at(5, 0, 0), at(5, 1, 0), &cal);
        assert_eq!(local(y[0].0, cst).to_rfc3339(), "2026-01-01T00:00:00+08:00");
        assert_eq!(local(y[0].1, cst).to_rfc3339(), "2027-01-01T00:00:00+08:00");
    }
}
