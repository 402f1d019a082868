//! Process models: what a process unit consumes, recovers and produces over time.
//!
//! Each kind has a table of flows per tonne of product at nominal operation (the figures and
//! their grounds are in docs/simulators.md). Output follows the unit's operating state (a
//! schedule of normal, reduced, stopped, restart), a slow swing and random drift. The converter
//! runs in heats (charge, blow, tap, idle): its gas and steam are recovered only while blowing
//! and its steel is counted at tapping. The potline has anode effects: minutes of high cell
//! voltage that cost extra DC energy.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    BlastFurnace,
    Converter,
    ReheatingFurnace,
    Kiln,
    Electrolysis,
    /// Air separation unit: the converter's oxygen and nitrogen from electricity. A conversion
    /// unit, drawn each step from what its enterprise's units take (see [`enterprise_step`]).
    OxygenPlant,
    /// Captive power plant burning the blast-furnace gas surplus and the converter gas from the
    /// holder. A conversion unit, drawn each step like the oxygen plant.
    PowerPlant,
    /// The enterprise's boundary: what it buys, stocks, sells and flares, drawn each step from
    /// the other units' flows (see [`enterprise_step`]), never integrated on its own.
    Enterprise,
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
    /// Raw material or working medium charged (hot metal, scrap, oxygen): measured, not energy.
    Material,
    /// A meter inside the boundary (the potline's DC energy): measured, not added.
    Submeter,
    /// Enterprise boundary: bought (grid import, coke, coal, gas, oxygen over the fence).
    Purchase,
    /// Enterprise boundary: sold outside (gas, steam).
    Export,
    /// Enterprise boundary: a stock's level changes by this flow (the coke yard).
    Stock,
    /// Gas burnt off at the flare: a loss inside the enterprise.
    Flare,
}

/// When a flow runs, for batch processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// All the time, at the average rate.
    Always,
    /// Converter: charging hot metal and scrap.
    Charge,
    /// Converter: oxygen blowing (gas and steam recovery).
    Blow,
    /// Converter: tapping steel.
    Tap,
}

/// One metered flow of a unit.
#[derive(Debug, Clone, Copy)]
pub struct FlowDef {
    /// Name within the unit, referenced by meters in a scenario.
    pub name: &'static str,
    /// Energy carrier code (see gateway/energy/data/coefficients.toml), or what the flow is otherwise.
    pub carrier: &'static str,
    pub role: Role,
    /// Physical unit the meter counts in.
    pub unit: &'static str,
    /// Quantity per tonne of product at nominal operation.
    pub per_t: f64,
    /// Relative swing of the specific consumption around `per_t` (process variation).
    pub wobble: f64,
    pub phase: Phase,
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
        phase: Phase::Always,
    }
}

const fn batch(
    name: &'static str,
    carrier: &'static str,
    role: Role,
    unit: &'static str,
    per_t: f64,
    wobble: f64,
    phase: Phase,
) -> FlowDef {
    FlowDef {
        name,
        carrier,
        role,
        unit,
        per_t,
        wobble,
        phase,
    }
}

use Role::{
    Consumed, Export, Flare, Material, Product, Purchase, Recovered, Stock, Submeter, Water,
};

/// Blast furnace (1 080 m3 class), per tonne of hot metal: coke rate 360 kg/t, pulverised coal
/// 150 kg/t, oxygen enrichment 40 m3/t (a working medium, from the oxygen plant), 1 600 m3/t
/// of blast-furnace gas generated (metered gross, at the top-gas main) of which the hot stoves
/// burn 700 m3/t (the rest goes to the gas network), TRT generating 35 kWh/t from top-gas
/// pressure. The blast itself is not metered: no citable coefficient for blast air in the data
/// file.
const BLAST_FURNACE: &[FlowDef] = &[
    flow("hot_metal", "hot_metal", Product, "t", 1.0, 0.0),
    flow("coke", "coke", Consumed, "t", 0.360, 0.02),
    flow("pci", "washed_coal", Consumed, "t", 0.150, 0.03),
    flow("oxygen", "oxygen", Consumed, "m3", 40.0, 0.05),
    flow("power", "electricity", Consumed, "kWh", 65.0, 0.05),
    flow("bfg_stoves", "bfg", Consumed, "m3", 700.0, 0.03),
    flow("bfg_export", "bfg", Recovered, "m3", 1600.0, 0.03),
    flow("trt", "electricity", Recovered, "kWh", 35.0, 0.05),
    flow("water", "water", Water, "m3", 1.2, 0.05),
];

/// Converter (BOF, 120 t heats), per tonne of qualified cast steel: recovery of converter gas (135 m3
/// at 7 500 kJ/m3) and steam (0.1 t, at GB/T 2589's low-pressure steam) exceeds what the process
/// consumes, oxygen and nitrogen (slag splashing, stirring) counted as the working media they
/// are (GB/T 2589 appendix B), so the net figure is negative: about -15 kgce/t, within
/// GB 21256-2025's -30 to -12. Argon is not metered: no citable coefficient in the data file.
const CONVERTER: &[FlowDef] = &[
    // The product is the caster's qualified cast steel (GB 21256); the liquid steel tapped is
    // 1.5 % more (ladle skulls, crop ends, rejects), weighed too.
    batch(
        "cast_steel",
        "crude_steel",
        Product,
        "t",
        1.0,
        0.0,
        Phase::Tap,
    ),
    batch(
        "steel",
        "liquid_steel",
        Material,
        "t",
        1.0 / CAST_YIELD,
        0.0,
        Phase::Tap,
    ),
    batch(
        "hot_metal",
        "hot_metal",
        Material,
        "t",
        0.90,
        0.02,
        Phase::Charge,
    ),
    batch("scrap", "scrap", Material, "t", 0.18, 0.05, Phase::Charge),
    batch("oxygen", "oxygen", Consumed, "m3", 55.0, 0.03, Phase::Blow),
    flow("nitrogen", "nitrogen", Consumed, "m3", 8.0, 0.05),
    flow("power", "electricity", Consumed, "kWh", 28.0, 0.05),
    flow("natural_gas", "natural_gas", Consumed, "m3", 3.0, 0.05),
    batch("steam", "steam", Recovered, "t", 0.100, 0.04, Phase::Blow),
    batch(
        "ldg",
        "converter_gas",
        Recovered,
        "m3",
        135.0,
        0.04,
        Phase::Blow,
    ),
    flow("water", "water", Water, "m3", 0.5, 0.05),
];

/// Rolling-mill reheating furnace with regenerative burners, per tonne of billets: 1.2 GJ/t,
/// converter gas from the holder (30 m3 at 7 500 kJ/m3) and coke-oven gas for the rest (58.5 m3
/// at 16 726 kJ/m3; all of it when the holder runs dry), 20 kWh/t for fans and drives.
const REHEATING_FURNACE: &[FlowDef] = &[
    flow("billets", "billets", Product, "t", 1.0, 0.0),
    flow("cog", "coke_oven_gas", Consumed, "m3", 58.5, 0.04),
    flow("ldg", "converter_gas", Consumed, "m3", 30.0, 0.04),
    flow("power", "electricity", Consumed, "kWh", 20.0, 0.05),
    flow("water", "water", Water, "m3", 0.3, 0.05),
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

/// Aluminium potline (300 cells at 400 kA), per tonne of aluminium: 3.95 V per cell at 92.5 %
/// current efficiency is 12 725 kWh/t DC; AC is DC over a 97 % rectifier efficiency. The
/// rectifiers' ampere-hour totaliser counts the line current: 1 t over Faraday's yield of the
/// cells in series at that efficiency, 10.74 kA-h.
const ELECTROLYSIS: &[FlowDef] = &[
    flow("aluminium", "aluminium", Product, "t", 1.0, 0.0),
    flow(
        "ac_power",
        "electricity",
        Consumed,
        "kWh",
        DC_KWH_PER_T / RECTIFIER_EFFICIENCY,
        0.01,
    ),
    flow(
        "dc_power",
        "electricity_dc",
        Submeter,
        "kWh",
        DC_KWH_PER_T,
        0.01,
    ),
    flow("water", "water", Water, "m3", 2.0, 0.05),
    flow(
        "line_current",
        "line_current",
        Submeter,
        "kAh",
        KAH_PER_T,
        0.0,
    ),
];

/// The oxygen plant's flows, drawn from what the enterprise's units take.
const OXYGEN_PLANT: &[FlowDef] = &[
    flow("power", "electricity", Consumed, "kWh", 0.0, 0.0),
    flow("oxygen", "oxygen", Recovered, "m3", 0.0, 0.0),
    flow("nitrogen", "nitrogen", Recovered, "m3", 0.0, 0.0),
];

/// The captive power plant's flows: the gases it burns, its gross generation and its own use.
const POWER_PLANT: &[FlowDef] = &[
    flow("bfg", "bfg", Consumed, "m3", 0.0, 0.0),
    flow("ldg", "converter_gas", Consumed, "m3", 0.0, 0.0),
    flow("generation", "electricity", Recovered, "kWh", 0.0, 0.0),
    flow("own_use", "electricity", Consumed, "kWh", 0.0, 0.0),
];

/// The enterprise's boundary meters. Grid import is what the units draw (the oxygen plant's
/// and the power plant's own use among them), plus the unmetered auxiliaries and the
/// distribution losses, less what TRT, waste-heat power and the power plant generate (an
/// export when that is more); coke arrives in a daily rhythm the yard evens out; coal, gas,
/// oxygen and nitrogen are bought as used where no plant of the enterprise makes them; of the
/// blast-furnace gas the stoves do not burn a share is flared, a share burnt by the power
/// plant, the rest sold to the neighbouring power company; converter gas goes into the holder,
/// which the reheating furnace and the power plant draw from and which vents to the flare when
/// full; steam is sold; the site's water intake is its units' water, what no unit meter sees and
/// the power plant's cooling-tower make-up.
const ENTERPRISE: &[FlowDef] = &[
    flow("grid", "electricity", Purchase, "kWh", 0.0, 0.0),
    flow("grid_export", "electricity", Export, "kWh", 0.0, 0.0),
    flow("coke_in", "coke", Purchase, "t", 0.0, 0.0),
    flow("coke_yard", "coke", Stock, "t", 0.0, 0.0),
    flow("pci_in", "washed_coal", Purchase, "t", 0.0, 0.0),
    flow("coal_in", "raw_coal", Purchase, "t", 0.0, 0.0),
    flow("gas_in", "natural_gas", Purchase, "m3", 0.0, 0.0),
    flow("cog_in", "coke_oven_gas", Purchase, "m3", 0.0, 0.0),
    flow("oxygen_in", "oxygen", Purchase, "m3", 0.0, 0.0),
    flow("nitrogen_in", "nitrogen", Purchase, "m3", 0.0, 0.0),
    flow("bfg_out", "bfg", Export, "m3", 0.0, 0.0),
    flow("bfg_flare", "bfg", Flare, "m3", 0.0, 0.0),
    flow("ldg_holder", "converter_gas", Stock, "m3", 0.0, 0.0),
    flow("ldg_flare", "converter_gas", Flare, "m3", 0.0, 0.0),
    flow("steam_out", "steam", Export, "t", 0.0, 0.0),
    flow("water_in", "water", Water, "m3", 0.0, 0.0),
];
/// Auxiliaries no unit meter sees (lighting, pumps, offices), kW.
pub const UNMETERED_AUX_KW: f64 = 1_500.0;
/// Distribution losses, as a share of what the units draw.
pub const LINE_LOSS: f64 = 0.015;
/// Share of the surplus blast-furnace gas flared.
pub const BFG_FLARED: f64 = 0.04;
/// Swing of the coke deliveries around what the furnace uses, over a day.
const COKE_DELIVERY_SWING: f64 = 0.25;
/// Fresh water the site takes in beyond what its units' meters see (offices, greening, leaks),
/// as a share of theirs, and the power plant's cooling-tower make-up per kWh generated.
pub const WATER_UNMETERED: f64 = 0.10;
pub const CPP_MAKEUP_M3_PER_KWH: f64 = 0.0025;
/// Electricity of the oxygen plant per m3 of oxygen (a large air separation unit, compression
/// included, takes 0.4-0.55); nitrogen is its by-product and takes none of its own.
pub const OXYGEN_KWH_PER_M3: f64 = 0.50;
/// Share of the blast-furnace gas surplus (after the flare's) the power plant burns.
pub const CPP_BFG_SHARE: f64 = 0.10;
/// The power plant's gross efficiency (gas-fired boilers and a condensing turbine) and its own
/// use as a share of its generation.
pub const CPP_EFFICIENCY: f64 = 0.30;
pub const CPP_OWN_USE: f64 = 0.08;
/// Heating values of the simulated gases, kJ/m3: blast-furnace and coke-oven gas at the data
/// file's figures (0.1286 and 0.5714 kgce/m3 at 29 307 kJ/kgce), converter gas as measured.
pub const BFG_KJ_PER_M3: f64 = 0.1286 * 29_307.0;
pub const LDG_KJ_PER_M3: f64 = 7_500.0;
pub const COG_KJ_PER_M3: f64 = 0.5714 * 29_307.0;
/// The converter-gas holder: its level when a run starts, the reserve below which the power
/// plant takes none (the furnace's), and the top above which it vents to the flare, m3 (an
/// 80 000 m3 holder, a common size for a 120 t converter shop).
pub const HOLDER_START_M3: f64 = 34_000.0;
pub const HOLDER_LOW_M3: f64 = 10_000.0;
pub const HOLDER_HIGH_M3: f64 = 72_000.0;
/// The power plant's draw from the holder per hour, as a share of the gas above the reserve
/// (a two-hour time constant), and at most, m3/h.
const HOLDER_DRAW_PER_H: f64 = 0.5;
const HOLDER_DRAW_MAX_M3_PER_H: f64 = 30_000.0;

/// What an enterprise's conversion units and boundary did over one step.
#[derive(Debug, Clone, PartialEq)]
pub struct EnterpriseStep {
    /// Each conversion unit's quantities (in its flows' order), in the order given.
    pub conversion: Vec<Vec<f64>>,
    /// The boundary's quantities, in [`ENTERPRISE`] order.
    pub boundary: Vec<f64>,
}

fn total(units: &[(UnitKind, Vec<f64>)], role: Role, carrier: &str) -> f64 {
    units
        .iter()
        .map(|(kind, d)| {
            kind.flows()
                .iter()
                .zip(d)
                .filter(|(f, _)| f.role == role && f.carrier == carrier)
                .map(|(_, q)| q)
                .sum::<f64>()
        })
        .sum()
}

/// An enterprise's conversion units and boundary over a step of `dt_ms` around `mid_ms`, from
/// what its process units did over the same step. `conversion` names each conversion unit and
/// whether it runs; `holder_m3` is the converter-gas holder's level before the step. A process
/// unit that burns converter gas the holder no longer has is switched to coke-oven gas of the
/// same heat here, in `process`.
pub fn enterprise_step(
    process: &mut [(UnitKind, Vec<f64>)],
    conversion: &[(UnitKind, bool)],
    holder_m3: f64,
    mid_ms: i64,
    dt_ms: i64,
) -> EnterpriseStep {
    let hours = dt_ms as f64 / HOUR_MS as f64;
    let runs = |kind| conversion.iter().any(|&(k, on)| k == kind && on);
    let (oxygen_plant, power_plant) = (runs(UnitKind::OxygenPlant), runs(UnitKind::PowerPlant));

    // Converter gas: the holder takes what the converters recover and gives the furnaces'
    // and the power plant's; empty, the furnaces burn coke-oven gas; full, it vents.
    let cpp_ldg = if power_plant {
        (HOLDER_DRAW_PER_H * (holder_m3 - HOLDER_LOW_M3)).clamp(0.0, HOLDER_DRAW_MAX_M3_PER_H)
            * hours
    } else {
        0.0
    };
    let mut level = holder_m3 + total(process, Recovered, "converter_gas")
        - total(process, Consumed, "converter_gas")
        - cpp_ldg;
    if level < 0.0 {
        switch_to_coke_oven_gas(process, -level);
        level = 0.0;
    }
    let ldg_flare = (level - HOLDER_HIGH_M3).max(0.0);
    level -= ldg_flare;

    let bfg_surplus = (total(process, Recovered, "bfg") - total(process, Consumed, "bfg")).max(0.0);
    let bfg_flare = bfg_surplus * BFG_FLARED;
    let cpp_bfg = if power_plant {
        (bfg_surplus - bfg_flare) * CPP_BFG_SHARE
    } else {
        0.0
    };
    let generation = (cpp_bfg * BFG_KJ_PER_M3 + cpp_ldg * LDG_KJ_PER_M3) * CPP_EFFICIENCY / 3_600.0;
    let own_use = generation * CPP_OWN_USE;
    let (oxygen, nitrogen) = (
        total(process, Consumed, "oxygen"),
        total(process, Consumed, "nitrogen"),
    );
    let oxygen_power = if oxygen_plant {
        oxygen * OXYGEN_KWH_PER_M3
    } else {
        0.0
    };
    let conversion_flows = conversion
        .iter()
        .map(|&(kind, on)| match (kind, on) {
            (UnitKind::OxygenPlant, true) => vec![oxygen_power, oxygen, nitrogen],
            (UnitKind::PowerPlant, true) => vec![cpp_bfg, cpp_ldg, generation, own_use],
            (kind, _) => vec![0.0; kind.flows().len()],
        })
        .collect();

    let net_grid = (total(process, Consumed, "electricity") + oxygen_power + own_use)
        * (1.0 + LINE_LOSS)
        + UNMETERED_AUX_KW * hours
        - total(process, Recovered, "electricity")
        - generation;
    let coke = total(process, Consumed, "coke");
    let day = mid_ms as f64 / 86_400_000.0 * std::f64::consts::TAU;
    let coke_in = coke * (1.0 + COKE_DELIVERY_SWING * day.sin());
    let bought = |made_here: bool, carrier| {
        if made_here {
            0.0
        } else {
            total(process, Consumed, carrier)
        }
    };
    let boundary = ENTERPRISE
        .iter()
        .map(|f| match f.name {
            "grid" => net_grid.max(0.0),
            "grid_export" => (-net_grid).max(0.0),
            "coke_in" => coke_in,
            "coke_yard" => coke_in - coke,
            "pci_in" => total(process, Consumed, "washed_coal"),
            "coal_in" => total(process, Consumed, "raw_coal"),
            "gas_in" => total(process, Consumed, "natural_gas"),
            "cog_in" => total(process, Consumed, "coke_oven_gas"),
            "oxygen_in" => bought(oxygen_plant, "oxygen"),
            "nitrogen_in" => bought(oxygen_plant, "nitrogen"),
            "bfg_out" => bfg_surplus - bfg_flare - cpp_bfg,
            "bfg_flare" => bfg_flare,
            "ldg_holder" => level - holder_m3,
            "ldg_flare" => ldg_flare,
            "steam_out" => total(process, Recovered, "steam"),
            "water_in" => {
                total(process, Water, "water") * (1.0 + WATER_UNMETERED)
                    + generation * CPP_MAKEUP_M3_PER_KWH
            }
            other => unreachable!("enterprise flow {other}"),
        })
        .collect();
    EnterpriseStep {
        conversion: conversion_flows,
        boundary,
    }
}

/// Moves `short_m3` of converter gas the holder cannot give to coke-oven gas of the same heat,
/// in the process units that burn both.
fn switch_to_coke_oven_gas(process: &mut [(UnitKind, Vec<f64>)], mut short_m3: f64) {
    for (kind, step) in process.iter_mut() {
        let flows = kind.flows();
        let find = |carrier| {
            flows
                .iter()
                .position(|f| f.role == Consumed && f.carrier == carrier)
        };
        if let (Some(ldg), Some(cog)) = (find("converter_gas"), find("coke_oven_gas")) {
            let moved = step[ldg].min(short_m3);
            step[ldg] -= moved;
            step[cog] += moved * LDG_KJ_PER_M3 / COG_KJ_PER_M3;
            short_m3 -= moved;
        }
    }
}

/// Faraday: 0.335 6 kg of aluminium per kA-h at 100 % current efficiency.
pub const FARADAY_KG_PER_KAH: f64 = 0.3356;
const CELL_VOLTAGE: f64 = 3.95;
const CURRENT_EFFICIENCY: f64 = 0.925;
const DC_KWH_PER_T: f64 = CELL_VOLTAGE / (FARADAY_KG_PER_KAH * CURRENT_EFFICIENCY) * 1000.0;
const RECTIFIER_EFFICIENCY: f64 = 0.97;
/// Anode effects: chance per potline-hour, duration, extra line voltage while one lasts.
const ANODE_EFFECT_PER_HOUR: f64 = 0.6;
const ANODE_EFFECT_MS: i64 = 120_000;
const ANODE_EFFECT_EXTRA_V: f64 = 30.0;
const POTLINE_CURRENT_KA: f64 = 400.0;
/// Cells in series on the demo potline.
pub const POTLINE_CELLS: f64 = 300.0;
/// Line current per tonne of aluminium, kA-h: Faraday's 0.3356 kg per kA-h per cell.
const KAH_PER_T: f64 = 1000.0 / (FARADAY_KG_PER_KAH * POTLINE_CELLS * CURRENT_EFFICIENCY);

/// Qualified cast steel per tonne of liquid steel tapped.
pub const CAST_YIELD: f64 = 0.985;
/// Converter heat size and the share of each phase in a heat.
const HEAT_T: f64 = 120.0;
const PHASES: [(Phase, f64); 4] = [
    (Phase::Charge, 0.14),
    (Phase::Blow, 0.44),
    (Phase::Tap, 0.22),
    (Phase::Always, 0.20),
];

/// Share of nominal electricity and water a stopped unit still draws.
const STANDBY: f64 = 0.03;
/// How much more fuel and power per tonne a unit needs while it restarts (heating up).
const RESTART_PENALTY: f64 = 0.30;

impl UnitKind {
    pub fn flows(self) -> &'static [FlowDef] {
        match self {
            UnitKind::BlastFurnace => BLAST_FURNACE,
            UnitKind::Converter => CONVERTER,
            UnitKind::ReheatingFurnace => REHEATING_FURNACE,
            UnitKind::Kiln => KILN,
            UnitKind::Electrolysis => ELECTROLYSIS,
            UnitKind::OxygenPlant => OXYGEN_PLANT,
            UnitKind::PowerPlant => POWER_PLANT,
            UnitKind::Enterprise => ENTERPRISE,
        }
    }

    /// Drawn each step from the process units of its enterprise ([`enterprise_step`]), never
    /// integrated on its own: the conversion units and the boundary.
    pub fn is_derived(self) -> bool {
        matches!(
            self,
            UnitKind::OxygenPlant | UnitKind::PowerPlant | UnitKind::Enterprise
        )
    }
}

/// An operating state, from a scenario's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Normal,
    /// Output at `load` of normal; fixed losses make each tonne a little dearer.
    Reduced {
        load: f64,
    },
    /// No output; standby power and water only.
    Stopped,
    /// Output ramps from zero to normal over `hours`, with extra fuel and power per tonne.
    Restart {
        hours: f64,
    },
    /// Converter gas and steam recovery out of service (vented, flared): everything else normal.
    NoRecovery,
}

/// A state taking effect at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateChange {
    pub at_ms: i64,
    pub state: State,
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
    /// Sorted by time; before the first change the unit runs normally.
    schedule: Vec<StateChange>,
}

/// Length of one integration step. Rates change over minutes, so a second is exact enough.
const STEP_MS: i64 = 1_000;
/// Spacing of the random knots of the load and consumption variation.
const KNOT_MS: i64 = 600_000;
const HOUR_MS: i64 = 3_600_000;

impl UnitModel {
    pub fn new(id: String, kind: UnitKind, capacity_t_per_h: f64, seed: u64) -> Self {
        let totals = vec![0.0; kind.flows().len()];
        UnitModel {
            id,
            kind,
            capacity_t_per_h,
            totals,
            seed,
            schedule: Vec::new(),
        }
    }

    pub fn set_schedule(&mut self, mut schedule: Vec<StateChange>) {
        schedule.sort_by_key(|c| c.at_ms);
        self.schedule = schedule;
    }

    pub fn schedule(&self) -> &[StateChange] {
        &self.schedule
    }

    /// The state in force at `t_ms` and when it began.
    pub fn state_at(&self, t_ms: i64) -> (State, i64) {
        self.schedule
            .iter()
            .rev()
            .find(|c| c.at_ms <= t_ms)
            .map_or((State::Normal, i64::MIN), |c| (c.state, c.at_ms))
    }

    /// Output relative to capacity in normal operation: a slow six-hour swing plus drift.
    fn swing(&self, t_ms: i64) -> f64 {
        let phase = (self.seed % 1000) as f64 / 1000.0 * std::f64::consts::TAU;
        let swing = 0.04 * (t_ms as f64 / 21_600_000.0 * std::f64::consts::TAU + phase).sin();
        0.95 + swing + 0.03 * noise(self.seed, t_ms)
    }

    /// Output relative to capacity, and the factor on specific consumption, at `t_ms`.
    fn operating(&self, t_ms: i64) -> (f64, f64) {
        match self.state_at(t_ms) {
            (State::Normal | State::NoRecovery, _) => (self.swing(t_ms), 1.0),
            (State::Reduced { load }, _) => (self.swing(t_ms) * load, 1.0 + 0.1 * (1.0 - load)),
            (State::Stopped, _) => (0.0, 1.0),
            (State::Restart { hours }, since) => {
                let x = ((t_ms - since) as f64 / (hours * HOUR_MS as f64)).clamp(0.0, 1.0);
                (self.swing(t_ms) * x, 1.0 + RESTART_PENALTY * (1.0 - x))
            }
        }
    }

    /// Rate of flow `k` in its unit per second at `t_ms`.
    pub fn rate(&self, k: usize, t_ms: i64) -> f64 {
        if self.kind.is_derived() {
            // Drawn from the other units step by step; its meters show no rate of their own.
            return 0.0;
        }
        let f = &self.kind.flows()[k];
        let (state, since) = self.state_at(t_ms);
        let nominal_per_s = self.capacity_t_per_h / 3600.0;
        if state == State::Stopped {
            let standby = matches!(
                (f.role, f.carrier),
                (Role::Consumed, "electricity") | (Role::Water, _)
            );
            return if standby {
                f.per_t * nominal_per_s * STANDBY
            } else {
                0.0
            };
        }
        if state == State::NoRecovery && f.role == Role::Recovered {
            return 0.0;
        }
        let (load, penalty) = self.operating(t_ms);
        let specific = f.per_t
            * (1.0 + f.wobble * noise(self.seed ^ ((k as u64 + 1) << 20), t_ms))
            * if f.role == Role::Consumed {
                penalty
            } else {
                1.0
            };
        let mut rate = match (self.kind, f.phase) {
            (UnitKind::Converter, phase) if phase != Phase::Always => {
                // Heats follow one another at the pace the operating state sets (not the
                // continuous swing: a heat is a heat); a lower load stretches the cycle.
                let load = match state {
                    State::Reduced { load } => load,
                    State::Restart { hours } => {
                        ((t_ms - since) as f64 / (hours * HOUR_MS as f64)).clamp(0.05, 1.0)
                    }
                    _ => 1.0,
                };
                let cycle_ms = HEAT_T / (self.capacity_t_per_h * load) * HOUR_MS as f64;
                let origin = if since == i64::MIN { 0 } else { since };
                let pos = ((t_ms - origin) as f64).rem_euclid(cycle_ms) / cycle_ms;
                let (mut from, mut share) = (0.0, 0.0);
                for (p, s) in PHASES {
                    if p == phase {
                        share = s;
                        break;
                    }
                    from += s;
                }
                if load > 0.0 && pos >= from && pos < from + share {
                    specific * HEAT_T / (share * cycle_ms / 1000.0)
                } else {
                    0.0
                }
            }
            _ => specific * nominal_per_s * load,
        };
        // An anode effect raises the line's voltage, not its current.
        if self.kind == UnitKind::Electrolysis
            && !matches!(f.role, Role::Product | Role::Water)
            && f.carrier != "line_current"
        {
            if let Some((start, end)) = self.anode_effect(t_ms.div_euclid(HOUR_MS)) {
                if t_ms >= start && t_ms < end && load > 0.0 {
                    let extra_kw = POTLINE_CURRENT_KA * ANODE_EFFECT_EXTRA_V;
                    let extra = if f.role == Role::Submeter {
                        extra_kw
                    } else {
                        extra_kw / RECTIFIER_EFFICIENCY
                    };
                    rate += extra / 3600.0;
                }
            }
        }
        rate
    }

    /// The anode effect in hour `hour` (counted from the epoch), if one happens: (start, end).
    pub fn anode_effect(&self, hour: i64) -> Option<(i64, i64)> {
        if self.kind != UnitKind::Electrolysis {
            return None;
        }
        let draw = (unit_random(self.seed ^ 0xAE, hour) + 1.0) / 2.0;
        if draw >= ANODE_EFFECT_PER_HOUR {
            return None;
        }
        let offset = ((unit_random(self.seed ^ 0xAF, hour) + 1.0) / 2.0
            * (HOUR_MS - ANODE_EFFECT_MS) as f64) as i64;
        let start = hour * HOUR_MS + offset;
        Some((start, start + ANODE_EFFECT_MS))
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

    /// kgce per metered unit, GB/T 2589 (2008 appendix A values); converter gas from an LHV of
    /// 7 500 kJ/m3; steam 1.0 MPa by the refinery method. Same figures as the gateway's file.
    pub(crate) fn coefficient(carrier: &str, unit: &str) -> f64 {
        match (carrier, unit) {
            ("electricity", "kWh") => 0.1229,
            ("coke", "t") => 971.4,
            ("washed_coal", "t") => 900.0,
            ("raw_coal", "t") => 714.3,
            ("bfg", "m3") => 0.1286,
            ("coke_oven_gas", "m3") => 0.5714,
            ("natural_gas", "m3") => 1.2143,
            ("converter_gas", "m3") => 7_500.0 / 29_307.0,
            ("steam", "t") => 128.6,
            // Working media, GB/T 2589-2008 appendix B (nitrogen as the by-product).
            ("oxygen", "m3") => 0.4,
            ("nitrogen", "m3") => 0.4,
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
        assert!((-30.0..=-12.0).contains(&bof), "converter {bof}");
        let rhf = nominal_kgce_per_t(UnitKind::ReheatingFurnace);
        assert!((35.0..=55.0).contains(&rhf), "reheating furnace {rhf}");
        let kiln = nominal_kgce_per_t(UnitKind::Kiln);
        assert!((100.0..=117.0).contains(&kiln), "kiln {kiln}");
        let al_kwh = UnitKind::Electrolysis.flows()[1].per_t;
        assert!(
            (13_000.0..=13_500.0).contains(&al_kwh),
            "potline {al_kwh} kWh/t"
        );
    }

    fn run(m: &mut UnitModel, from: i64, to: i64) -> Vec<f64> {
        let mut acc = vec![0.0; m.totals.len()];
        m.advance(from, to, &mut acc);
        acc
    }

    #[test]
    fn integration_is_additive_across_split_points() {
        let mut a = UnitModel::new("u".into(), UnitKind::Kiln, 208.0, 7);
        let mut b = a.clone();
        run(&mut a, 0, 7_200_000);
        run(&mut b, 0, 1_234_567);
        run(&mut b, 1_234_567, 7_200_000);
        for (x, y) in a.totals.iter().zip(&b.totals) {
            assert!((x - y).abs() < 1e-9 * x.abs().max(1.0), "{x} vs {y}");
        }
        assert!(
            (380.0..420.0).contains(&a.totals[0]),
            "two hours near 95 % of 208 t/h: {}",
            a.totals[0]
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_plant() {
        let go = |seed| {
            let mut m = UnitModel::new("u".into(), UnitKind::BlastFurnace, 108.0, seed);
            run(&mut m, 0, 3_600_000)
        };
        assert_eq!(go(1), go(1));
        assert_ne!(go(1), go(2));
    }

    #[test]
    fn converter_recovers_only_while_blowing_and_taps_whole_heats() {
        let mut m = UnitModel::new("bof".into(), UnitKind::Converter, 150.0, 3);
        let ldg = 9;
        let steel = 0;
        // One heat at 150 t/h is 48 minutes; blowing is 14 %..58 % of it.
        let cycle = 48 * 60_000;
        assert_eq!(m.rate(ldg, cycle / 20), 0.0, "charging");
        assert!(m.rate(ldg, cycle / 3) > 0.0, "blowing");
        assert_eq!(m.rate(steel, cycle / 3), 0.0, "no steel while blowing");
        assert!(m.rate(steel, cycle * 7 / 10) > 0.0, "tapping");
        let q = run(&mut m, 0, 10 * cycle);
        // One-second steps blur each phase edge by at most a second of tapping (0.19 t).
        assert!(
            (q[steel] - 1_200.0).abs() < 20.0 * 0.19,
            "ten heats of 120 t: {}",
            q[steel]
        );
        let net: f64 = CONVERTER
            .iter()
            .zip(&q)
            .map(|(f, q)| match f.role {
                Role::Consumed => q * coefficient(f.carrier, f.unit),
                Role::Recovered => -q * coefficient(f.carrier, f.unit),
                _ => 0.0,
            })
            .sum::<f64>()
            / q[steel];
        assert!(
            (-30.0..-12.0).contains(&net),
            "negative-energy steelmaking: {net}"
        );
    }

    #[test]
    fn operating_states_change_output_and_energy() {
        let h = HOUR_MS;
        let mut m = UnitModel::new("k".into(), UnitKind::Kiln, 208.0, 5);
        m.set_schedule(vec![
            StateChange {
                at_ms: 2 * h,
                state: State::Stopped,
            },
            StateChange {
                at_ms: 4 * h,
                state: State::Restart { hours: 2.0 },
            },
            StateChange {
                at_ms: 6 * h,
                state: State::Reduced { load: 0.5 },
            },
        ]);
        let normal = run(&mut m, 0, h);
        let _ = run(&mut m, h, 2 * h);
        let stopped = run(&mut m, 2 * h, 3 * h);
        assert_eq!(stopped[0], 0.0, "no clinker while stopped");
        assert!(
            stopped[2] > 0.0 && stopped[2] < 0.05 * normal[2],
            "standby power only: {}",
            stopped[2]
        );
        assert_eq!(stopped[1], 0.0, "no coal while stopped");
        let restart = run(&mut m, 4 * h, 5 * h);
        assert!(
            restart[0] < 0.5 * normal[0],
            "output ramps up: {}",
            restart[0]
        );
        assert!(
            restart[1] / restart[0] > 1.1 * normal[1] / normal[0],
            "a restarting kiln burns more per tonne"
        );
        let reduced = run(&mut m, 7 * h, 8 * h);
        assert!(
            (reduced[0] / normal[0] - 0.5).abs() < 0.1,
            "half load: {}",
            reduced[0] / normal[0]
        );
    }

    #[test]
    fn converter_without_recovery_goes_above_zero() {
        let mut m = UnitModel::new("bof".into(), UnitKind::Converter, 150.0, 3);
        m.set_schedule(vec![StateChange {
            at_ms: 0,
            state: State::NoRecovery,
        }]);
        let q = run(&mut m, 0, 8 * HOUR_MS);
        let kgce: f64 = CONVERTER
            .iter()
            .zip(&q)
            .filter(|(f, _)| f.role == Role::Consumed || f.role == Role::Recovered)
            .map(|(f, q)| {
                let sign = if f.role == Role::Consumed { 1.0 } else { -1.0 };
                sign * q * coefficient(f.carrier, f.unit)
            })
            .sum();
        assert!(kgce > 0.0, "{kgce}");
    }

    #[test]
    fn potline_output_follows_faraday_and_anode_effects_cost_energy() {
        let mut m = UnitModel::new("pot".into(), UnitKind::Electrolysis, 37.2, 9);
        let q = run(&mut m, 0, 24 * HOUR_MS);
        let faraday_t_per_h =
            FARADAY_KG_PER_KAH * POTLINE_CURRENT_KA * 300.0 * CURRENT_EFFICIENCY / 1000.0;
        assert!(
            (faraday_t_per_h - 37.2).abs() < 0.1,
            "capacity is Faraday's: {faraday_t_per_h}"
        );
        let effects = (0..24).filter_map(|h| m.anode_effect(h)).count();
        assert!((5..=22).contains(&effects), "about 0.6 per hour: {effects}");
        let dc_per_t = q[2] / q[0];
        assert!(dc_per_t > DC_KWH_PER_T * 0.99, "DC kWh/t {dc_per_t}");
        assert!(
            (q[1] / q[2] - 1.0 / RECTIFIER_EFFICIENCY).abs() < 0.01,
            "AC = DC / rectifier efficiency"
        );
    }
}
