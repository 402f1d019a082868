//! Stock levels: a coal yard's or coke bunker's tonnes, a gas holder's m³, as their meters read
//! them at the start and end of each period. The balance counts a stock's *change* (its meter's
//! signed slots); an energy manager also reads the level itself (期初/期末库存, the holder's
//! level over time), which only the raw readings hold.

use serde::Serialize;

use crate::view::ReadRecord;

/// How far before a period's boundary a reading may be taken as the level there. A level
/// read earlier is not the level then: the boundary shows none rather than a stale figure.
pub const LEVEL_WINDOW_MS: i64 = 3_600_000;
/// For a period still running, its closing level is the latest reading of this last while,
/// shown with when it was read (a stopped meter's last level is still what is known).
pub const LATEST_WINDOW_MS: i64 = 86_400_000;

/// One stock meter's level at the start of the range and at the end of each period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StockLevels {
    pub device: String,
    pub point: String,
    pub carrier: Option<String>,
    pub unit: String,
    /// At the start of the first period.
    pub opening: Option<Level>,
    /// At the end of each period, in order (none where no good reading was taken in the
    /// [`LEVEL_WINDOW_MS`] before it); for a period still running, the latest reading (in the
    /// [`LATEST_WINDOW_MS`] before now).
    pub closing: Vec<Option<Level>>,
}

/// A level at a boundary: the meter's last good reading at or before it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Level {
    /// The boundary, or now for a period still running (RFC 3339, plant time).
    pub at: String,
    /// When the reading was taken (RFC 3339, plant time).
    pub read_at: String,
    pub value: f64,
}

/// The levels of every stock meter of `plant`'s boundary over `periods` (in order), `now_ms`
/// being the plant's now.
pub fn stock_levels(
    plant: &ems_energy::model::Plant,
    reader: &dyn ReadRecord,
    periods: &[(i64, i64)],
    now_ms: i64,
) -> anyhow::Result<Vec<StockLevels>> {
    let tz = plant.utc_offset();
    let level_at = |f: &ems_energy::model::Flow, at: i64| -> anyhow::Result<Option<Level>> {
        let (at, window) = if at > now_ms {
            (now_ms, LATEST_WINDOW_MS)
        } else {
            (at, LEVEL_WINDOW_MS)
        };
        // A reading at the boundary itself is the level there: the window ends after it.
        let found = reader.last_reading(&f.device, &f.point, at - window, at + 1)?;
        Ok(found.map(|(read, value)| Level {
            at: ems_energy::calendar::local_rfc3339(at, tz),
            read_at: ems_energy::calendar::local_rfc3339(read, tz),
            value,
        }))
    };
    let mut out = Vec::new();
    for f in plant.boundary.iter().map(|b| &b.flow) {
        if f.role != ems_energy::model::Role::Stock {
            continue;
        }
        out.push(StockLevels {
            device: f.device.clone(),
            point: f.point.clone(),
            carrier: f.carrier.clone(),
            unit: f.unit.clone(),
            opening: match periods.first() {
                Some(p) => level_at(f, p.0)?,
                None => None,
            },
            closing: periods
                .iter()
                .map(|p| level_at(f, p.1))
                .collect::<anyhow::Result<_>>()?,
        });
    }
    Ok(out)
}
