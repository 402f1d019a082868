//! What an enterprise's energy costs over a period, from its meters' 15-minute slots and its
//! tariff: grid electricity by time-of-use band (each slot at its band's price), the month's
//! highest 15-minute demand against the contracted demand and its demand charge, the other
//! carriers bought at their prices; and each unit's cost and cost per tonne of its product, its
//! electricity at the grid's price of each slot and its fuels at their purchase prices.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::calendar::local;
use crate::coefficients::unit_factor;
use crate::counter::{slots_within, PointSlot, SLOT_MS};
use crate::figures::SlotSource;
use crate::model::{Flow, Function, Plant, Role};
use crate::tariff::{BandKind, TariffConfig};

/// Above this share of the contracted demand, the excess is charged twice (发改办价格〔2016〕
/// 1583号, as secondary sources transcribe it; not checked against the notice itself).
pub const DEMAND_TOLERANCE: f64 = 1.05;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cost {
    pub start: String,
    pub end: String,
    pub currency: String,
    /// The tariff's `source`.
    pub source: String,
    pub electricity: GridElectricity,
    pub carriers: Vec<CarrierCost>,
    /// Electricity (energy and demand) and the other carriers bought.
    pub total: f64,
    /// The enterprise's product: its sites' product units' (`water_product_units`, an
    /// integrated works' crude steel), and the total per tonne of it.
    pub product_units: Vec<String>,
    pub product_t: f64,
    pub cost_per_t: Option<f64>,
    pub units: Vec<UnitCost>,
}

/// Grid electricity bought (the purchase meters of carrier `electricity`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GridElectricity {
    pub bands: Vec<BandUse>,
    pub kwh: f64,
    pub energy_cost: f64,
    /// The highest 15-minute average demand of the period, kW, and the slot it began.
    pub max_demand_kw: f64,
    pub max_demand_at: Option<String>,
    pub contracted_kw: Option<f64>,
    /// The month's demand charge: the contracted demand at its price, and the demand above
    /// 105 % of it once more. Null for a period that is not a whole month, or without prices.
    pub demand_cost: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BandUse {
    pub kind: BandKind,
    pub kwh: f64,
    pub cost: f64,
    /// Of the period's kWh, percent.
    pub share_pct: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CarrierCost {
    pub carrier: String,
    pub quantity: f64,
    pub unit: String,
    pub price: f64,
    pub cost: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnitCost {
    pub unit: String,
    pub name: String,
    pub function: Function,
    pub electricity_kwh: f64,
    pub electricity_cost: f64,
    /// Its other carriers consumed, at their purchase prices (unpriced carriers left out).
    pub fuel_cost: f64,
    pub cost: f64,
    pub product_t: f64,
    pub cost_per_t: Option<f64>,
}

/// The cost of `plant` (one enterprise's) over each of `periods` on `tariff`; `whole_months`
/// says the periods are calendar months, which a demand charge is billed on.
pub fn enterprise_cost<S: SlotSource>(
    plant: &Plant,
    tariff: &TariffConfig,
    source: &S,
    periods: &[(i64, i64)],
    whole_months: bool,
) -> Result<Vec<Cost>, S::Error> {
    let (Some(first), Some(last)) = (periods.first(), periods.last()) else {
        return Ok(Vec::new());
    };
    let mut read: BTreeMap<(&str, &str), Vec<(i64, PointSlot)>> = BTreeMap::new();
    for f in plant.flows() {
        if let std::collections::btree_map::Entry::Vacant(e) =
            read.entry((f.device.as_str(), f.point.as_str()))
        {
            e.insert(source.point_slots(&f.device, &f.point, first.0, last.1)?);
        }
    }
    Ok(periods
        .iter()
        .map(|&(start, end)| cost(plant, tariff, &read, (start, end), whole_months))
        .collect())
}

type Slots<'p> = BTreeMap<(&'p str, &'p str), Vec<(i64, PointSlot)>>;

fn slots_of<'r>(read: &'r Slots<'_>, f: &Flow) -> &'r [(i64, PointSlot)] {
    read.iter()
        .find(|((device, point), _)| *device == f.device && *point == f.point)
        .map_or(&[], |(_, slots)| slots.as_slice())
}

fn is_electricity(f: &Flow) -> bool {
    f.carrier.as_deref() == Some("electricity")
}

fn cost(
    plant: &Plant,
    tariff: &TariffConfig,
    read: &Slots<'_>,
    (start, end): (i64, i64),
    whole_month: bool,
) -> Cost {
    let tz = plant.utc_offset();
    let in_period = |f: &Flow| slots_within(slots_of(read, f), start, end).iter();
    // Grid purchases slot by slot: each at its band's price, and their sum per slot for the
    // demand (kWh in 15 minutes, times 4, is the average kW).
    let mut by_slot: BTreeMap<i64, f64> = BTreeMap::new();
    for b in plant
        .boundary
        .iter()
        .filter(|b| b.flow.role == Role::Purchase)
    {
        if !is_electricity(&b.flow) {
            continue;
        }
        let k = unit_factor(&b.flow.unit, "kWh").unwrap_or(1.0);
        for (t, s) in in_period(&b.flow) {
            *by_slot.entry(*t).or_default() += s.delta * k;
        }
    }
    let mut bands: BTreeMap<BandKind, (f64, f64)> = BTreeMap::new();
    let price_of = |t: i64| tariff.band_at(t, tz).map(|b| (b.kind, b.price));
    for (&t, &kwh) in &by_slot {
        if let Some((kind, price)) = price_of(t) {
            let b = bands.entry(kind).or_default();
            b.0 += kwh;
            b.1 += kwh * price;
        }
    }
    let kwh: f64 = by_slot.values().sum();
    let (max_at, max_kwh) = by_slot
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or((None, 0.0), |(t, v)| (Some(*t), *v));
    let max_demand_kw = max_kwh * (3_600_000 / SLOT_MS) as f64;
    let demand_cost = match (
        whole_month,
        tariff.contracted_kw,
        tariff.demand_price_per_kw_month,
    ) {
        (true, Some(contract), Some(price)) => {
            let excess = (max_demand_kw - DEMAND_TOLERANCE * contract).max(0.0);
            Some(if excess > 0.0 {
                (max_demand_kw + excess) * price
            } else {
                contract * price
            })
        }
        _ => None,
    };
    let energy_cost: f64 = bands.values().map(|b| b.1).sum();
    let electricity = GridElectricity {
        bands: BandKind::ALL
            .iter()
            .filter_map(|k| {
                bands.get(k).map(|&(kwh_b, cost)| BandUse {
                    kind: *k,
                    kwh: kwh_b,
                    cost,
                    share_pct: (kwh > 0.0).then(|| 100.0 * kwh_b / kwh),
                })
            })
            .collect(),
        kwh,
        energy_cost,
        max_demand_kw,
        max_demand_at: max_at.map(|t| local(t, tz).to_rfc3339()),
        contracted_kw: tariff.contracted_kw,
        demand_cost,
    };
    // The other carriers bought, each at its price in its unit.
    let priced = |f: &Flow| {
        let carrier = f.carrier.as_deref()?;
        let p = tariff.prices.iter().find(|p| p.carrier == carrier)?;
        Some((p, unit_factor(&f.unit, &p.unit)?))
    };
    let mut carriers: Vec<CarrierCost> = Vec::new();
    for b in plant
        .boundary
        .iter()
        .filter(|b| b.flow.role == Role::Purchase)
    {
        let Some((p, k)) = priced(&b.flow) else {
            continue;
        };
        let q: f64 = in_period(&b.flow).map(|(_, s)| s.delta * k).sum();
        match carriers.iter_mut().find(|c| c.carrier == p.carrier) {
            Some(c) => {
                c.quantity += q;
                c.cost += q * p.price;
            }
            None => carriers.push(CarrierCost {
                carrier: p.carrier.clone(),
                quantity: q,
                unit: p.unit.clone(),
                price: p.price,
                cost: q * p.price,
            }),
        }
    }
    let units: Vec<UnitCost> = plant
        .units
        .iter()
        .map(|u| {
            let (mut e_kwh, mut e_cost, mut fuel, mut product) = (0.0, 0.0, 0.0, 0.0);
            for f in &u.flows {
                match f.role {
                    Role::Product => {
                        product += in_period(f).map(|(_, s)| s.delta).sum::<f64>() * f.factor();
                    }
                    Role::Consumed if !f.own_use && is_electricity(f) => {
                        let k = unit_factor(&f.unit, "kWh").unwrap_or(1.0);
                        for (t, s) in in_period(f) {
                            e_kwh += s.delta * k;
                            e_cost += s.delta * k * price_of(*t).map_or(0.0, |p| p.1);
                        }
                    }
                    Role::Consumed if !f.own_use => {
                        if let Some((p, k)) = priced(f) {
                            fuel += in_period(f).map(|(_, s)| s.delta * k).sum::<f64>() * p.price;
                        }
                    }
                    _ => {}
                }
            }
            let cost = e_cost + fuel;
            UnitCost {
                unit: u.id.clone(),
                name: u.name.clone(),
                function: u.function,
                electricity_kwh: e_kwh,
                electricity_cost: e_cost,
                fuel_cost: fuel,
                cost,
                product_t: product,
                cost_per_t: (product > 0.0).then(|| cost / product),
            }
        })
        .collect();
    let product_units: Vec<String> = plant
        .sites
        .iter()
        .flat_map(|s| s.product_units.iter().cloned())
        .collect();
    let product_t: f64 = units
        .iter()
        .filter(|u| product_units.contains(&u.unit))
        .map(|u| u.product_t)
        .sum();
    let total =
        energy_cost + demand_cost.unwrap_or(0.0) + carriers.iter().map(|c| c.cost).sum::<f64>();
    Cost {
        start: local(start, tz).to_rfc3339(),
        end: local(end, tz).to_rfc3339(),
        currency: tariff.currency.clone(),
        source: tariff.source.clone(),
        electricity,
        carriers,
        total,
        cost_per_t: (product_t > 0.0).then(|| total / product_t),
        product_units,
        product_t,
        units,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;
    use crate::tariff::tests::tariff;
    use ems_config::Source;

    /// 2025-01-01 00:00 local (+08:00).
    const DAY0: i64 = 1_735_660_800_000;
    const DAY: i64 = 86_400_000;

    struct Slots(HashMap<String, Vec<(i64, PointSlot)>>);

    impl SlotSource for Slots {
        type Error = Infallible;
        fn point_slots(
            &self,
            device: &str,
            _point: &str,
            from_ms: i64,
            to_ms: i64,
        ) -> Result<Vec<(i64, PointSlot)>, Infallible> {
            Ok(self
                .0
                .get(device)
                .into_iter()
                .flatten()
                .filter(|(t, _)| (from_ms..to_ms).contains(t))
                .copied()
                .collect())
        }
    }

    fn slot(delta: f64) -> PointSlot {
        PointSlot {
            delta,
            covered_ms: SLOT_MS,
            estimated: 0.0,
        }
    }

    /// A works buying its grid power and coke; its furnace takes 50 kWh a quarter hour and 10 t
    /// of coke in the day, and makes 100 t. The grid meter reads 100 kWh a quarter, 300 at
    /// 09:00 (a peak quarter).
    fn day() -> (Plant, Slots) {
        let text = "[enterprise]\nid = \"w\"\nname = \"W\"\n\
            [[enterprise.sites]]\nid = \"main\"\nname = \"Main\"\nwater_product_units = [\"bf\"]\n\
            [[units]]\nid = \"bf\"\nname = \"BF\"\nkind = \"blast_furnace\"\n\
            [[units.flows]]\ndevice = \"iron\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n\
            [[units.flows]]\ndevice = \"bf-power\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"\n\
            [[units.flows]]\ndevice = \"bf-coke\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"coke\"\nunit = \"t\"\n\
            [[boundary]]\ndevice = \"grid\"\npoint = \"total\"\nrole = \"purchase\"\ncarrier = \"electricity\"\nunit = \"MWh\"\n\
            [[boundary]]\ndevice = \"coke-in\"\npoint = \"total\"\nrole = \"purchase\"\ncarrier = \"coke\"\nunit = \"kg\"\n";
        let plant =
            Plant::from_tables(&Source::embedded("w.toml", text)).unwrap_or_else(|e| panic!("{e}"));
        let quarters = |v: &dyn Fn(i64) -> f64| -> Vec<(i64, PointSlot)> {
            (0..96).map(|q| (DAY0 + q * SLOT_MS, slot(v(q)))).collect()
        };
        let mut slots = HashMap::new();
        slots.insert(
            "grid".into(),
            quarters(&|q| if q == 36 { 0.3 } else { 0.1 }),
        );
        slots.insert("bf-power".into(), quarters(&|_| 50.0));
        slots.insert("bf-coke".into(), vec![(DAY0, slot(10.0))]);
        slots.insert("coke-in".into(), vec![(DAY0 + SLOT_MS, slot(12_000.0))]);
        slots.insert("iron".into(), vec![(DAY0 + DAY / 2, slot(100.0))]);
        (plant, Slots(slots))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn each_quarter_hour_is_priced_in_its_band_and_each_unit_carries_its_own() {
        let (plant, slots) = day();
        let c = enterprise_cost(&plant, &tariff(), &slots, &[(DAY0, DAY0 + DAY)], false)
            .unwrap()
            .remove(0);
        let e = &c.electricity;
        // January: valley 00-08 and 22-24 (40 quarters), peak 08-11 and 18-22 (28, one of them
        // 300 kWh), flat 11-18 (28).
        let bands: Vec<(BandKind, f64, f64)> =
            e.bands.iter().map(|b| (b.kind, b.kwh, b.cost)).collect();
        let want = [
            (BandKind::Peak, 3_000.0, 3_000.0),
            (BandKind::Flat, 2_800.0, 1_680.0),
            (BandKind::Valley, 4_000.0, 1_200.0),
        ];
        for ((k, kwh, cost), (wk, wkwh, wcost)) in bands.iter().zip(want) {
            assert_eq!(*k, wk);
            assert!(close(*kwh, wkwh) && close(*cost, wcost), "{bands:?}");
        }
        assert_eq!(bands.len(), 3);
        assert!(close(e.kwh, 9_800.0));
        assert!(close(e.max_demand_kw, 1_200.0));
        assert_eq!(
            e.max_demand_at.as_deref(),
            Some("2025-01-01T09:00:00+08:00")
        );
        assert_eq!(e.demand_cost, None, "a day is billed no demand");
        // 12 000 kg of coke at 2 000 a tonne.
        assert_eq!(c.carriers.len(), 1);
        assert!(close(c.carriers[0].cost, 24_000.0));
        assert!(close(c.total, 5_880.0 + 24_000.0));
        // The furnace: 50 kWh a quarter at each band's price, 10 t of coke, 100 t of iron.
        let bf = &c.units[0];
        assert!(close(
            bf.electricity_cost,
            50.0 * (40.0 * 0.3 + 28.0 * 1.0 + 28.0 * 0.6)
        ));
        assert!(close(bf.fuel_cost, 20_000.0));
        assert!(close(bf.cost_per_t.unwrap(), (2_840.0 + 20_000.0) / 100.0));
        // The enterprise's product is its site's: the furnace's iron.
        assert_eq!(
            (c.product_units.as_slice(), c.product_t),
            (&["bf".to_owned()][..], 100.0)
        );
        assert!(close(c.cost_per_t.unwrap(), 29_880.0 / 100.0));
    }

    #[test]
    fn a_months_demand_is_billed_on_the_contract_and_its_excess_above_105_percent_twice() {
        let (plant, slots) = day();
        let month = [(DAY0, DAY0 + 31 * DAY)];
        let bill = |contract: f64| {
            let mut t = tariff();
            t.contracted_kw = Some(contract);
            enterprise_cost(&plant, &t, &slots, &month, true).unwrap()[0]
                .electricity
                .demand_cost
                .unwrap()
        };
        // 1 200 kW at most: within 105 % of 10 000 kW, the contract is billed.
        assert!(close(bill(10_000.0), 400_000.0));
        // Above 1 050 kW of a 1 000 kW contract: 1 200 kW, and 150 kW once more.
        assert!(close(bill(1_000.0), 1_350.0 * 40.0));
    }
}
