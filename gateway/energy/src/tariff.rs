//! An enterprise's energy prices (`[enterprise.tariff]`): the grid's time-of-use electricity
//! tariff (尖峰/峰/平/谷 bands by season, in local time), its demand charge against the
//! contracted maximum demand, and the prices of the other carriers it buys. Prices are the
//! plant's own contract's: the file names where they come from (`source`), like every figure.

use chrono::{Datelike, FixedOffset, Timelike};
use serde::{Deserialize, Serialize};

use crate::calendar::local;
use crate::counter::SLOT_MS;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TariffConfig {
    /// Where the prices come from: the supply contract, the provincial price notice.
    pub source: String,
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Time-of-use bands by season; the seasons' months cover the year once.
    pub seasons: Vec<Season>,
    /// Contracted maximum demand (合同最大需量), kW, and the demand price per kW and month:
    /// the month's demand charge (两部制基本电费 by demand).
    #[serde(default)]
    pub contracted_kw: Option<f64>,
    #[serde(default)]
    pub demand_price_per_kw_month: Option<f64>,
    /// Prices of the other carriers bought, per `unit` of each.
    #[serde(default)]
    pub prices: Vec<CarrierPrice>,
}

fn default_currency() -> String {
    "CNY".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Season {
    /// Months 1 to 12.
    pub months: Vec<u32>,
    /// The day's bands, local `from` to `to` (`"24:00"` for midnight at the end); together
    /// they cover the day once, on quarter hours.
    pub bands: Vec<Band>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub kind: BandKind,
    pub from: String,
    pub to: String,
    /// Price per kWh.
    pub price: f64,
}

/// The time-of-use bands of Chinese grid tariffs.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BandKind {
    /// 尖峰
    Sharp,
    /// 高峰
    Peak,
    /// 平段
    Flat,
    /// 低谷
    Valley,
}

impl BandKind {
    pub const ALL: [BandKind; 4] = [
        BandKind::Sharp,
        BandKind::Peak,
        BandKind::Flat,
        BandKind::Valley,
    ];
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CarrierPrice {
    pub carrier: String,
    pub unit: String,
    pub price: f64,
}

/// Quarter hours in a day.
const QUARTERS: usize = 96;

impl TariffConfig {
    /// What is wrong with it, as (the key under the tariff, why).
    pub fn check(&self) -> Result<(), (String, String)> {
        let mut month_seen = [false; 12];
        for (i, s) in self.seasons.iter().enumerate() {
            for &m in &s.months {
                let slot = month_seen
                    .get_mut((m as usize).wrapping_sub(1))
                    .ok_or_else(|| {
                        (
                            format!("seasons[{i}].months"),
                            format!("month {m} is not 1 to 12"),
                        )
                    })?;
                if std::mem::replace(slot, true) {
                    return Err((
                        format!("seasons[{i}].months"),
                        format!("month {m} is in two seasons"),
                    ));
                }
            }
            let mut quarter_seen = [false; QUARTERS];
            for (j, b) in s.bands.iter().enumerate() {
                let key = format!("seasons[{i}].bands[{j}]");
                let (from, to) = (quarter(&b.from), quarter(&b.to));
                let (Some(from), Some(to)) = (from, to) else {
                    return Err((
                        key,
                        "`from` and `to` are local times on quarter hours, \"07:30\", \"24:00\""
                            .into(),
                    ));
                };
                if from >= to {
                    return Err((
                        key,
                        "`from` must be before `to` (split a band across midnight in two)".into(),
                    ));
                }
                if !(b.price >= 0.0 && b.price.is_finite()) {
                    return Err((
                        format!("{key}.price"),
                        "a price is a number of at least 0".into(),
                    ));
                }
                for q in &mut quarter_seen[from..to] {
                    if std::mem::replace(q, true) {
                        return Err((key, "overlaps another band".into()));
                    }
                }
            }
            if let Some(q) = quarter_seen.iter().position(|seen| !seen) {
                return Err((
                    format!("seasons[{i}].bands"),
                    format!("no band covers {:02}:{:02}", q / 4, q % 4 * 15),
                ));
            }
        }
        if let Some(m) = month_seen.iter().position(|seen| !seen) {
            return Err(("seasons".into(), format!("no season has month {}", m + 1)));
        }
        for (key, v) in [
            ("contracted_kw", self.contracted_kw),
            ("demand_price_per_kw_month", self.demand_price_per_kw_month),
        ] {
            if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
                return Err((key.into(), "a number of at least 0".into()));
            }
        }
        for (i, p) in self.prices.iter().enumerate() {
            if !(p.price >= 0.0 && p.price.is_finite()) {
                return Err((
                    format!("prices[{i}].price"),
                    "a number of at least 0".into(),
                ));
            }
        }
        Ok(())
    }

    /// The band of the 15-minute slot starting at `slot_ms`, in the plant's local time. A
    /// checked tariff always has one.
    pub fn band_at(&self, slot_ms: i64, tz: FixedOffset) -> Option<&Band> {
        let t = local(slot_ms - slot_ms.rem_euclid(SLOT_MS), tz);
        let q = (t.hour() * 4 + t.minute() / 15) as usize;
        self.seasons
            .iter()
            .find(|s| s.months.contains(&t.month()))?
            .bands
            .iter()
            .find(|b| (quarter(&b.from)..quarter(&b.to)).contains(&Some(q)))
    }
}

/// The quarter hour of a local time "HH:MM" on a quarter (0 to 96).
fn quarter(text: &str) -> Option<usize> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (usize, usize) = (h.parse().ok()?, m.parse().ok()?);
    (m % 15 == 0 && m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 4 + m / 15)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Summer (July to September) with a sharp band at 11:00 to 13:00; the rest of the year
    /// without. Illustrative prices.
    pub(crate) fn tariff() -> TariffConfig {
        let band = |kind, from: &str, to: &str, price| Band {
            kind,
            from: from.into(),
            to: to.into(),
            price,
        };
        let rest = vec![
            band(BandKind::Valley, "00:00", "08:00", 0.3),
            band(BandKind::Peak, "08:00", "11:00", 1.0),
            band(BandKind::Flat, "11:00", "18:00", 0.6),
            band(BandKind::Peak, "18:00", "22:00", 1.0),
            band(BandKind::Valley, "22:00", "24:00", 0.3),
        ];
        let mut summer = rest.clone();
        summer[2] = band(BandKind::Sharp, "11:00", "13:00", 1.2);
        summer.insert(3, band(BandKind::Flat, "13:00", "18:00", 0.6));
        TariffConfig {
            source: "test".into(),
            currency: "CNY".into(),
            seasons: vec![
                Season {
                    months: vec![7, 8, 9],
                    bands: summer,
                },
                Season {
                    months: vec![1, 2, 3, 4, 5, 6, 10, 11, 12],
                    bands: rest,
                },
            ],
            contracted_kw: Some(10_000.0),
            demand_price_per_kw_month: Some(40.0),
            prices: vec![CarrierPrice {
                carrier: "coke".into(),
                unit: "t".into(),
                price: 2_000.0,
            }],
        }
    }

    #[test]
    fn each_quarter_hour_is_in_its_seasons_band_in_local_time() {
        let t = tariff();
        assert_eq!(t.check(), Ok(()));
        let tz = FixedOffset::east_opt(8 * 3600).unwrap();
        // 2025-07-01 11:15 local is 03:15 UTC; 2025-01-01 11:15 local likewise.
        let july = 1_751_339_700_000;
        let january = 1_735_701_300_000;
        assert_eq!(t.band_at(july, tz).unwrap().kind, BandKind::Sharp);
        assert_eq!(t.band_at(january, tz).unwrap().kind, BandKind::Flat);
        // 23:45 local, the last quarter of the day.
        assert_eq!(
            t.band_at(january + 12 * 3_600_000 + 30 * 60_000, tz)
                .unwrap()
                .kind,
            BandKind::Valley
        );
    }

    #[test]
    fn a_tariff_that_misses_or_doubles_an_hour_or_a_month_is_refused() {
        let mut t = tariff();
        t.seasons[1].bands[0].to = "07:00".into();
        assert_eq!(
            t.check(),
            Err(("seasons[1].bands".into(), "no band covers 07:00".into()))
        );
        let mut t = tariff();
        t.seasons[0].bands[0].to = "08:15".into();
        assert_eq!(
            t.check().unwrap_err(),
            ("seasons[0].bands[1]".into(), "overlaps another band".into())
        );
        let mut t = tariff();
        t.seasons[1].months.retain(|&m| m != 12);
        assert_eq!(
            t.check().unwrap_err(),
            ("seasons".into(), "no season has month 12".into())
        );
        let mut t = tariff();
        t.seasons[1].months.push(7);
        assert_eq!(t.check().unwrap_err().1, "month 7 is in two seasons");
        let mut t = tariff();
        t.seasons[0].bands[0].from = "00:10".into();
        assert!(t.check().unwrap_err().1.contains("quarter hours"));
    }
}
