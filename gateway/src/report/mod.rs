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

/// Parses "YYYY-MM".
pub fn parse_month(s: &str) -> anyhow::Result<Month> {
    let (y, m) = s
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("`{s}`: a month is written YYYY-MM"))?;
    let (y, m): (i32, u32) = (
        y.parse().map_err(|_| anyhow::anyhow!("`{s}`: bad year"))?,
        m.parse().map_err(|_| anyhow::anyhow!("`{s}`: bad month"))?,
    );
    anyhow::ensure!((1..=12).contains(&m), "`{s}`: month must be 01 to 12");
    Ok((y, m))
}
