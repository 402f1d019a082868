//! Reports for the provincial authority, built from the stored 15-minute slots with the same
//! accounting as the dashboard, so a figure in a report is the figure on the screen.
//!
//! [`annual`] is the enterprise's annual energy utilisation report with its data-quality
//! section; [`compliance`] the monthly report of each unit's days against its limits; [`baseline`] fits an energy baseline and verifies savings against it; [`tables`]
//! writes any report's tables as CSV; [`pdf`] draws the annual report in Chinese.

pub mod annual;
pub mod baseline;
pub mod compliance;
pub mod pdf;
pub mod savings;
pub mod tables;

use crate::accounting::{buckets, indicators, Indicator, Period};
use crate::config::{Plant, Unit};
use crate::store::Reader;

/// Version of the report JSON: readers check it before reading the figures.
pub const FORMAT_VERSION: u32 = 1;

/// The formats every report comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    /// One row per figure ([`tables`]).
    Csv,
    /// In Chinese ([`pdf`]).
    Pdf,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "json" => Format::Json,
            "csv" => Format::Csv,
            "pdf" => Format::Pdf,
            _ => return None,
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Pdf => "pdf",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Pdf => "application/pdf",
        }
    }
}

/// A report as the bytes of `format`: pretty JSON, its `figures` as CSV, or its `pdf`.
pub fn document<R: serde::Serialize>(
    format: Format,
    report: &R,
    figures: impl FnOnce(&R) -> Vec<tables::Figure>,
    pdf: impl FnOnce(&R) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        Format::Json => {
            let mut out = serde_json::to_vec_pretty(report)?;
            out.push(b'\n');
            out
        }
        Format::Csv => {
            let mut out = Vec::new();
            tables::write_csv(&figures(report), &mut out)?;
            out
        }
        Format::Pdf => pdf(report)?,
    })
}

/// A unit's figures for each of `periods`, from the stored slots.
pub fn unit_figures(
    plant: &Plant,
    reader: &Reader,
    unit: &Unit,
    periods: &[(i64, i64)],
) -> anyhow::Result<Vec<Indicator>> {
    let (Some(first), Some(last)) = (periods.first(), periods.last()) else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::with_capacity(unit.flows.len());
    for f in &unit.flows {
        rows.push(reader.point_slots(&f.device, &f.point, first.0, last.1)?);
    }
    Ok(indicators(unit, periods, plant.utc_offset, |i| {
        rows[i].clone()
    }))
}

/// A period's start and end, ms.
pub type Span = (i64, i64);

/// The local calendar year `year` and its months, as period boundaries.
pub fn year_periods(plant: &Plant, year: i32) -> anyhow::Result<(Span, Vec<Span>)> {
    let start = local_midnight(plant, year, 1, 1)?;
    let end = local_midnight(plant, year + 1, 1, 1)?;
    Ok((
        (start, end),
        buckets(Period::Month, start, end, &plant.calendar),
    ))
}

/// Milliseconds of local midnight at the start of a date.
pub fn local_midnight(plant: &Plant, year: i32, month: u32, day: u32) -> anyhow::Result<i64> {
    use chrono::TimeZone as _;
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| anyhow::anyhow!("{year}-{month:02}-{day:02} is not a date"))?;
    Ok(plant
        .utc_offset
        .from_local_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
        .single()
        .expect("a fixed offset maps every local time once")
        .timestamp_millis())
}

/// A month as `(year, month)`.
pub type Month = (i32, u32);

/// A report parameter that cannot be answered (the API's 400): the rest of a report's errors
/// are the gateway's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// The most months one range of a report may cover (20 years).
pub const MAX_REPORT_MONTHS: i64 = 240;

/// Checks a report's months before any work: in order, not before the month of `[ingest]
/// earliest` (nothing before it is ever stored), not after the year after `now_ms`, and at
/// most [`MAX_REPORT_MONTHS`].
pub fn check_months(plant: &Plant, from: Month, to: Month, now_ms: i64) -> anyhow::Result<()> {
    use chrono::Datelike as _;
    let month_of = |ms: i64| {
        let d = chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .with_timezone(&plant.utc_offset);
        (d.year(), d.month())
    };
    let index = |(y, m): Month| i64::from(y) * 12 + i64::from(m) - 1;
    let (earliest, now) = (month_of(plant.earliest_ms), month_of(now_ms));
    let bad = |why: String| anyhow::Error::new(InvalidRequest(why));
    if index(from) > index(to) {
        return Err(bad(format!(
            "{}-{:02} is after {}-{:02}",
            from.0, from.1, to.0, to.1
        )));
    }
    if index(from) < index(earliest) {
        return Err(bad(format!(
            "{}-{:02} is before {}-{:02}, the month of [ingest] earliest: nothing is stored before it",
            from.0, from.1, earliest.0, earliest.1
        )));
    }
    if to.0 > now.0 + 1 {
        return Err(bad(format!("{} is more than a year ahead", to.0)));
    }
    if index(to) - index(from) + 1 > MAX_REPORT_MONTHS {
        return Err(bad(format!("more than {MAX_REPORT_MONTHS} months at once")));
    }
    Ok(())
}

/// Parses "YYYY-MM".
pub fn parse_month(s: &str) -> anyhow::Result<Month> {
    let (y, m) = s
        .split_once('-')
        .ok_or_else(|| InvalidRequest(format!("`{s}`: a month is written YYYY-MM")))?;
    let bad = |why: &str| anyhow::Error::new(InvalidRequest(format!("`{s}`: {why}")));
    if y.len() != 4 || !y.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the year has four digits"));
    }
    let (y, m): (i32, u32) = (
        y.parse().map_err(|_| bad("bad year"))?,
        m.parse().map_err(|_| bad("bad month"))?,
    );
    if !(1..=12).contains(&m) {
        return Err(bad("month must be 01 to 12"));
    }
    Ok((y, m))
}
