//! Reports for the provincial authority, built from the stored 15-minute slots with the same
//! accounting as the dashboard, so a figure in a report is the figure on the screen.
//!
//! [`annual`] is the enterprise's annual energy utilisation report with its data-quality
//! section; [`compliance`] the monthly report of each unit's days against its limits; [`baseline`] fits an energy baseline and verifies savings against it; [`tables`]
//! writes any report's tables as CSV; [`pdf`] draws the annual report in Chinese.

pub mod annual;
pub mod compliance;
pub mod pdf;
pub mod savings;
pub mod seal;
pub mod tables;

use crate::view::Reader;
use ems_energy::calendar::{buckets, Period};
use ems_energy::Plant;

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

/// A report as the bytes of `format`: pretty JSON, its `figures` as CSV, or its `pdf`. With
/// `seal`, the JSON is sealed (its evidence and the gateway's signature) and the PDF gets an
/// evidence page and that sealed JSON attached.
fn document<R: serde::Serialize>(
    format: Format,
    report: &R,
    figures: impl FnOnce(&R) -> Vec<tables::Figure>,
    pdf: impl FnOnce(&R, Option<&seal::Sealed>) -> anyhow::Result<Vec<u8>>,
    seal: Option<(&seal::Seal, &Inputs, &Request)>,
) -> anyhow::Result<Vec<u8>> {
    let json = |r: &R| -> anyhow::Result<Vec<u8>> {
        let mut out = serde_json::to_vec_pretty(r)?;
        out.push(b'\n');
        Ok(out)
    };
    let sealed = |r: &R| -> anyhow::Result<Option<seal::Sealed>> {
        seal.map(|(s, inputs, request)| seal::seal(serde_json::to_value(r)?, inputs, request, s))
            .transpose()
    };
    Ok(match format {
        Format::Json => match sealed(report)? {
            Some(s) => s.json,
            None => json(report)?,
        },
        Format::Csv => {
            let mut out = Vec::new();
            tables::write_csv(&figures(report), &mut out)?;
            out
        }
        Format::Pdf => pdf(report, sealed(report)?.as_ref())?,
    })
}

/// What every report is made from: the plant, its stored record, "now" (what is still to come is
/// not missing) and the earliest time anything can be stored (`[ingest] earliest`).
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub plant: &'a Plant,
    pub reader: &'a Reader,
    pub now_ms: i64,
    pub earliest_ms: i64,
}

/// Which report, with its parameters: what the command line and the API both ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// An enterprise's annual energy utilisation report of a local calendar year (`enterprise`:
    /// its id or credit code, needed where the gateway serves several).
    Annual {
        year: i32,
        enterprise: Option<String>,
    },
    /// A month's days per unit of an enterprise against the limits.
    Compliance {
        month: Month,
        enterprise: Option<String>,
    },
    /// A unit's savings against a baseline, regressed on output and on `variables` (meter
    /// points whose monthly increase is a relevant variable).
    Savings {
        unit: String,
        baseline: (Month, Month),
        reporting: (Month, Month),
        variables: Vec<(String, String)>,
    },
}

impl Request {
    /// The document's name without its extension: `annual-2025`, `compliance-2025-07`,
    /// `savings-kiln1`.
    pub fn name(&self) -> String {
        match self {
            Request::Annual {
                year,
                enterprise: None,
            } => format!("annual-{year}"),
            Request::Annual {
                year,
                enterprise: Some(e),
            } => format!("annual-{e}-{year}"),
            Request::Compliance {
                month: (y, m),
                enterprise: None,
            } => format!("compliance-{y}-{m:02}"),
            Request::Compliance {
                month: (y, m),
                enterprise: Some(e),
            } => format!("compliance-{e}-{y}-{m:02}"),
            Request::Savings { unit, .. } => format!("savings-{unit}"),
        }
    }
}

impl Request {
    /// The periods the report draws its figures from: the year, the month, or a savings
    /// report's baseline and reporting months.
    pub fn spans(&self, plant: &Plant) -> anyhow::Result<Vec<Span>> {
        let months = |(from, to): (Month, Month)| months_span(plant, from, to);
        Ok(match self {
            Request::Annual { year, .. } => vec![months(((*year, 1), (*year, 12)))?],
            Request::Compliance { month, .. } => vec![months((*month, *month))?],
            Request::Savings {
                baseline,
                reporting,
                ..
            } => vec![months(*baseline)?, months(*reporting)?],
        })
    }
}

/// `DEVICE/POINT` variables of a savings report.
pub fn parse_variables<S: AsRef<str>>(texts: &[S]) -> anyhow::Result<Vec<(String, String)>> {
    texts
        .iter()
        .map(|v| {
            let v = v.as_ref();
            v.split_once('/')
                .filter(|(d, p)| !d.is_empty() && !p.is_empty())
                .map(|(d, p)| (d.to_owned(), p.to_owned()))
                .ok_or_else(|| {
                    anyhow::Error::new(InvalidRequest(format!(
                        "variable `{v}`: write DEVICE/POINT"
                    )))
                })
        })
        .collect()
}

/// Builds the report `request` asks for and writes it in `format`: the one way the command line
/// and the API make a report. `font` gives the CJK font a PDF embeds (asked for PDF only);
/// `progress(done, total)` follows a long build; `seal` seals it (JSON and PDF) as it is handed
/// out (`None`: the figures alone, as a verifier draws them again).
pub fn make(
    inputs: &Inputs,
    request: &Request,
    format: Format,
    font: &dyn Fn() -> anyhow::Result<krilla::text::Font>,
    progress: impl FnMut(usize, usize),
    seal: Option<&seal::Seal>,
) -> anyhow::Result<Vec<u8>> {
    let seal = seal.map(|s| (s, inputs, request));
    match request {
        Request::Annual { year, enterprise } => {
            let plant = &of_enterprise(inputs.plant, enterprise.as_deref())?;
            let r = annual::build(&Inputs { plant, ..*inputs }, *year, progress)?;
            let pdf = |r: &_, sealed: Option<&_>| pdf::annual(r, plant, &font()?, sealed);
            document(format, &r, tables::annual_figures, pdf, seal)
        }
        Request::Compliance { month, enterprise } => {
            let plant = &of_enterprise(inputs.plant, enterprise.as_deref())?;
            let r = compliance::build(&Inputs { plant, ..*inputs }, *month)?;
            let pdf = |r: &_, sealed: Option<&_>| pdf::compliance(r, &font()?, sealed);
            document(format, &r, tables::compliance_figures, pdf, seal)
        }
        Request::Savings {
            unit,
            baseline,
            reporting,
            variables,
        } => {
            let r = savings::build(inputs, unit, *baseline, *reporting, variables)?;
            let pdf = |r: &_, sealed: Option<&_>| pdf::savings(r, &font()?, sealed);
            document(format, &r, tables::savings_figures, pdf, seal)
        }
    }
}

/// The plant of the enterprise a report is for: the one named, or the only one; a gateway
/// serving several needs the name.
/// The enterprise's balance over `span` where it has something to draw it from (boundary
/// meters or sites' water intake), and each site's water from it (empty otherwise).
fn period_balance(
    plant: &Plant,
    reader: &Reader,
    span: (i64, i64),
) -> anyhow::Result<(
    Option<ems_energy::balance::Balance>,
    Vec<ems_energy::balance::SiteWater>,
)> {
    if plant.boundary.is_empty() && plant.sites.is_empty() {
        return Ok((None, Vec::new()));
    }
    let balance = ems_energy::balance::enterprise_balance(plant, reader, &[span])?.pop();
    let sites = balance
        .as_ref()
        .map(|b| b.sites.clone())
        .unwrap_or_default();
    Ok((balance, sites))
}

fn of_enterprise(plant: &Plant, name: Option<&str>) -> anyhow::Result<Plant> {
    let keys = || {
        plant
            .enterprises
            .iter()
            .filter_map(|e| e.key())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => plant.of_enterprise(n).ok_or_else(|| {
            anyhow::Error::new(InvalidRequest(format!(
                "no enterprise `{n}` (there are: {})",
                keys()
            )))
        }),
        None if plant.enterprises.len() > 1 => Err(anyhow::Error::new(InvalidRequest(format!(
            "the gateway serves several enterprises ({}): name one",
            keys()
        )))),
        None => Ok(plant.clone()),
    }
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

/// The local months `from` to `to`, both whole: from the first's first midnight to the midnight
/// after the second.
pub fn months_span(plant: &Plant, from: Month, to: Month) -> anyhow::Result<Span> {
    let next = if to.1 == 12 {
        (to.0 + 1, 1)
    } else {
        (to.0, to.1 + 1)
    };
    Ok((
        local_midnight(plant, from.0, from.1, 1)?,
        local_midnight(plant, next.0, next.1, 1)?,
    ))
}

/// Milliseconds of local midnight at the start of a date.
pub fn local_midnight(plant: &Plant, year: i32, month: u32, day: u32) -> anyhow::Result<i64> {
    use chrono::TimeZone as _;
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| anyhow::anyhow!("{year}-{month:02}-{day:02} is not a date"))?;
    Ok(plant
        .utc_offset()
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
impl Inputs<'_> {
    /// Checks a report's months before any work (see [`check_months`]).
    pub fn check_months(&self, from: Month, to: Month) -> anyhow::Result<()> {
        check_months(self.plant, from, to, self.earliest_ms, self.now_ms)
    }
}

pub fn check_months(
    plant: &Plant,
    from: Month,
    to: Month,
    earliest_ms: i64,
    now_ms: i64,
) -> anyhow::Result<()> {
    use chrono::Datelike as _;
    let month_of = |ms: i64| {
        let d = chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .with_timezone(&plant.utc_offset());
        (d.year(), d.month())
    };
    let index = |(y, m): Month| i64::from(y) * 12 + i64::from(m) - 1;
    let (earliest, now) = (month_of(earliest_ms), month_of(now_ms));
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
