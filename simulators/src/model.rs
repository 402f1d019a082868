//! Process models: how much of each carrier a process unit consumes or recovers per tonne of
//! product, and how its output varies over time. The figures are typical of the equipment the
//! scenarios name and are documented in docs/simulators.md.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    BlastFurnace,
    Converter,
    Kiln,
    Electrolysis,
}

/// What a flow is to the unit's energy boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Energy carried into the boundary.
    Consumed,
    /// Energy recovered or exported across the boundary (subtracted).
    Recovered,
    /// The product the unit figure is per tonne of.
    Product,
    /// Fresh-water intake.
    Water,
}

/// One metered flow of a unit.
#[derive(Debug, Clone, Copy)]
pub struct FlowDef {
    /// Name within the unit, referenced by meters in a scenario.
    pub name: &'static str,
    /// Energy carrier code (see gateway/data/coefficients.toml); the product or "water" otherwise.
    pub carrier: &'static str,
    pub role: Role,
    /// Physical unit the meter counts in.
    pub unit: &'static str,
    /// Quantity per tonne of product at nominal operation.
    pub per_t: f64,
    /// Relative swing of the specific consumption around `per_t` (process variation).
    pub wobble: f64,
}

const fn flow(
    name: &'static str,
    carrier: &'static str,
    role: Role,
    unit: &'static str,
    per_t: f64,
    wobble: f64,
) -> FlowDef {
    FlowDef {
        name,
        carrier,
        role,
        unit,
        per_t,
        wobble,
    }
}

use Role::{Consumed, Product, Recovered, Water};

/// Blast furnace, per tonne of hot metal (1 080 m3 class): coke rate 360 kg/t, pulverised coal
/// 150 kg/t, hot stoves burning 700 m3/t of blast-furnace gas, 1 600 m3/t of gas exported,
/// TRT generating 35 kWh/t from top-gas pressure.
const BLAST_FURNACE: &[FlowDef] = &[
    flow("hot_metal", "hot_metal", Product, "t", 1.0, 0.0),
    flow("coke", "coke", Consumed, "t", 0.360, 0.02),
    flow("pci", "washed_coal", Consumed, "t", 0.150, 0.03),
    flow("power", "electricity", Consumed, "kWh", 65.0, 0.05),
    flow("bfg_stoves", "bfg", Consumed, "m3", 700.0, 0.03),
    flow("bfg_export", "bfg", Recovered, "m3", 1600.0, 0.03),
    flow("trt", "electricity", Recovered, "kWh", 35.0, 0.05),
    flow("water", "water", Water, "m3", 1.2, 0.05),
];

/// Converter (BOF, 120 t class), per tonne of liquid steel: recovery of converter gas and steam
/// exceeds what the process consumes, so the net figure is negative.
const CONVERTER: &[FlowDef] = &[
    flow("steel", "crude_steel", Product, "t", 1.0, 0.0),
    flow("power", "electricity", Consumed, "kWh", 28.0, 0.05),
    flow("natural_gas", "natural_gas", Consumed, "m3", 3.0, 0.05),
    flow("steam", "steam_1_0mpa", Recovered, "t", 0.080, 0.04),
    flow("ldg", "converter_gas", Recovered, "m3", 100.0, 0.04),
    flow("water", "water", Water, "m3", 0.5, 0.05),
];

/// Cement kiln line (5 000 t/d clinker), per tonne of clinker: 3 000 kJ/kg clinker from raw
/// coal, 55 kWh/t line power, 30 kWh/t from waste-heat power generation.
const KILN: &[FlowDef] = &[
    flow("clinker", "clinker", Product, "t", 1.0, 0.0),
    flow("coal", "raw_coal", Consumed, "t", 0.1435, 0.02),
    flow("power", "electricity", Consumed, "kWh", 55.0, 0.04),
    flow("whr", "electricity", Recovered, "kWh", 30.0, 0.05),
    flow("water", "water", Water, "m3", 0.25, 0.05),
];

/// Aluminium potline (300 cells at 400 kA), per tonne of aluminium: AC power 13 120 kWh/t
/// (3.95 V per cell, 92.5 % current efficiency, 97 % rectifier efficiency).
const ELECTROLYSIS: &[FlowDef] = &[
    flow("aluminium", "aluminium", Product, "t", 1.0, 0.0),
    flow("ac_power", "electricity", Consumed, "kWh", 13_120.0, 0.01),
    flow("water", "water", Water, "m3", 2.0, 0.05),
];

impl UnitKind {
    pub fn flows(self) -> &'static [FlowDef] {
        match self {
            UnitKind::BlastFurnace => BLAST_FURNACE,
            UnitKind::Converter => CONVERTER,
            UnitKind::Kiln => KILN,
            UnitKind::Electrolysis => ELECTROLYSIS,
        }
    }
}

/// A unit being simulated: its flows integrated since the start of the run.
#[derive(Debug, Clone)]
pub struct UnitModel {
    pub id: String,
    pub kind: UnitKind,
    pub capacity_t_per_h: f64,
    /// Quantity of each flow since the start, in the flow's unit, same order as `kind.flows()`.
    pub totals: Vec<f64>,
    seed: u64,
}

/// Length of one integration step. Rates change over minutes, so a second is exact enough.
const STEP_MS: i64 = 1_000;
/// Spacing of the random knots of the load and consumption variation.
const KNOT_MS: i64 = 600_000;

impl UnitModel {
    pub fn new(id: String, kind: UnitKind, capacity_t_per_h: f64, seed: u64) -> Self {
        let totals = vec![0.0; kind.flows().len()];
        UnitModel {
            id,
            kind,
            capacity_t_per_h,
            totals,
            seed,
        }
    }

    /// Output relative to capacity at time `t_ms`: a slow six-hour swing plus random drift.
    pub fn load(&self, t_ms: i64) -> f64 {
        let phase = (self.seed % 1000) as f64 / 1000.0 * std::f64::consts::TAU;
        let swing = 0.04 * (t_ms as f64 / 21_600_000.0 * std::f64::consts::TAU + phase).sin();
        0.95 + swing + 0.03 * noise(self.seed, t_ms)
    }

    /// Rate of flow `k` in its unit per second at `t_ms`.
    pub fn rate(&self, k: usize, t_ms: i64) -> f64 {
        let f = &self.kind.flows()[k];
        let product_per_s = self.capacity_t_per_h / 3600.0 * self.load(t_ms);
        let specific = f.per_t * (1.0 + f.wobble * noise(self.seed ^ ((k as u64 + 1) << 20), t_ms));
        product_per_s * specific
    }

    /// Integrates every flow from `from_ms` to `to_ms`, adding into `totals` and `into`.
    pub fn advance(&mut self, from_ms: i64, to_ms: i64, into: &mut [f64]) {
        let mut t = from_ms;
        while t < to_ms {
            let next = (t - t.rem_euclid(STEP_MS) + STEP_MS).min(to_ms);
            let mid = t + (next - t) / 2;
            let dt_s = (next - t) as f64 / 1000.0;
            for (k, acc) in into.iter_mut().enumerate().take(self.totals.len()) {
                let q = self.rate(k, mid) * dt_s;
                self.totals[k] += q;
                *acc += q;
            }
            t = next;
        }
    }
}

/// Smooth pseudo-random signal in [-1, 1]: linear between seeded knots every ten minutes.
fn noise(seed: u64, t_ms: i64) -> f64 {
    let knot = t_ms.div_euclid(KNOT_MS);
    let frac = t_ms.rem_euclid(KNOT_MS) as f64 / KNOT_MS as f64;
    let a = unit_random(seed, knot);
    let b = unit_random(seed, knot + 1);
    a + (b - a) * frac
}

fn unit_random(seed: u64, knot: i64) -> f64 {
    // splitmix64: a fixed, well-mixed hash, so the same seed always gives the same plant.
    let mut z = seed ^ (knot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coefficient(carrier: &str, unit: &str) -> f64 {
        // kgce per metered unit, GB/T 2589 (2008 appendix A values); converter gas from an LHV
        // of 7 500 kJ/m3; steam 1.0 MPa by the refinery method. Same as the gateway's data file.
        match (carrier, unit) {
            ("electricity", "kWh") => 0.1229,
            ("coke", "t") => 971.4,
            ("washed_coal", "t") => 900.0,
            ("raw_coal", "t") => 714.3,
            ("bfg", "m3") => 0.1286,
            ("natural_gas", "m3") => 1.2143,
            ("converter_gas", "m3") => 7_500.0 / 29_307.0,
            ("steam_1_0mpa", "t") => 108.571,
            other => panic!("no coefficient for {other:?}"),
        }
    }

    fn nominal_kgce_per_t(kind: UnitKind) -> f64 {
        kind.flows()
            .iter()
            .map(|f| match f.role {
                Role::Consumed => f.per_t * coefficient(f.carrier, f.unit),
                Role::Recovered => -f.per_t * coefficient(f.carrier, f.unit),
                _ => 0.0,
            })
            .sum()
    }

    #[test]
    fn nominal_unit_energy_lies_in_the_documented_ranges() {
        let bf = nominal_kgce_per_t(UnitKind::BlastFurnace);
        assert!((370.0..=410.0).contains(&bf), "blast furnace {bf}");
        let bof = nominal_kgce_per_t(UnitKind::Converter);
        assert!((-30.0..=-10.0).contains(&bof), "converter {bof}");
        let kiln = nominal_kgce_per_t(UnitKind::Kiln);
        assert!((100.0..=117.0).contains(&kiln), "kiln {kiln}");
        let al_kwh = UnitKind::Electrolysis.flows()[1].per_t;
        assert!(
            (13_000.0..=13_500.0).contains(&al_kwh),
            "potline {al_kwh} kWh/t"
        );
    }

    #[test]
    fn integration_is_additive_across_split_points() {
        let mut a = UnitModel::new("u".into(), UnitKind::Kiln, 208.0, 7);
        let mut b = a.clone();
        let mut sink = vec![0.0; a.totals.len()];
        a.advance(0, 7_200_000, &mut sink);
        b.advance(0, 1_234_567, &mut sink);
        b.advance(1_234_567, 7_200_000, &mut sink);
        for (x, y) in a.totals.iter().zip(&b.totals) {
            assert!((x - y).abs() < 1e-9 * x.abs().max(1.0), "{x} vs {y}");
        }
        // Two hours at about 95 % of 208 t/h.
        assert!((380.0..420.0).contains(&a.totals[0]), "{}", a.totals[0]);
    }

    #[test]
    fn the_same_seed_gives_the_same_plant() {
        let run = |seed| {
            let mut m = UnitModel::new("u".into(), UnitKind::BlastFurnace, 108.0, seed);
            let mut sink = vec![0.0; m.totals.len()];
            m.advance(0, 3_600_000, &mut sink);
            m.totals
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
