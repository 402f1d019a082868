//! The running plant: the models advanced on the simulated clock, read through meters with
//! their faults, and the truth (hourly intervals and events) collected as it happens. Pure
//! state; the Modbus services and the truth writer drive it.

use chrono::{SecondsFormat, TimeZone, Utc};
use tokio_modbus::ExceptionCode;

use crate::faults::{Fault, FaultKind, FaultSpec};
use crate::meter::{Reading, Table};
use crate::model::{enterprise_step, Role, State, StateChange, UnitKind, HOLDER_START_M3};
use crate::scenario::Scenario;
use crate::truth::{TruthEvent, TruthFlow, TruthLine, TruthRecord};

const HOUR_MS: i64 = 3_600_000;
/// The grid on which conversion units and boundaries are drawn from the process units: a
/// minute is fine for a gas holder and cheap enough to run a week in seconds.
const DERIVED_STEP_MS: i64 = 60_000;

/// Something that happens at an instant and goes into the truth file.
#[derive(Debug, Clone)]
struct Pending {
    at_ms: i64,
    what: Happening,
}

#[derive(Debug, Clone)]
enum Happening {
    State { unit: usize, change: StateChange },
    FaultStart(usize),
    FaultEnd(usize),
    AnodeEffect { unit: usize, end_ms: i64 },
}

pub struct Plant {
    scenario: Scenario,
    /// Simulated time up to which the models are integrated.
    now_ms: i64,
    /// Start of the truth interval being accumulated.
    interval_start_ms: i64,
    /// Per unit, per flow: quantity in the current truth interval.
    interval: Vec<Vec<f64>>,
    faults: Vec<Fault>,
    /// Per meter: what it showed when a freeze began.
    frozen: Vec<Option<Reading>>,
    /// Per meter: how many times its counter has wrapped.
    wraps: Vec<i64>,
    /// Per meter: requests it was asked so far.
    asked: Vec<u64>,
    pending: Vec<Pending>,
    closed: Vec<TruthLine>,
}

impl Plant {
    pub fn new(mut scenario: Scenario, start_ms: i64) -> Self {
        let mut pending = Vec::new();
        for &(unit, at_h, state) in &scenario.schedule {
            let change = StateChange {
                at_ms: start_ms + (at_h * HOUR_MS as f64) as i64,
                state,
            };
            pending.push(Pending {
                at_ms: change.at_ms,
                what: Happening::State { unit, change },
            });
        }
        for (i, unit) in scenario.units.iter_mut().enumerate() {
            let changes = pending
                .iter()
                .filter_map(|p| match p.what {
                    Happening::State { unit, change } if unit == i => Some(change),
                    _ => None,
                })
                .collect();
            unit.set_schedule(changes);
        }
        let specs = scenario.faults.clone();
        let n_meters = scenario.meters.len();
        let interval = scenario
            .units
            .iter()
            .map(|u| vec![0.0; u.totals.len()])
            .collect();
        let mut plant = Plant {
            scenario,
            now_ms: start_ms,
            interval_start_ms: start_ms,
            interval,
            faults: Vec::new(),
            frozen: vec![None; n_meters],
            wraps: vec![0; n_meters],
            asked: vec![0; n_meters],
            pending,
            closed: Vec::new(),
        };
        for spec in specs {
            plant
                .add_fault(&spec, start_ms)
                .expect("scenario faults were validated");
        }
        plant.schedule_anode_effects(start_ms.div_euclid(HOUR_MS));
        plant.pending.sort_by_key(|p| p.at_ms);
        plant
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// Adds a fault whose `at_h` counts from `origin_ms` (the run's start for scenario faults,
    /// now for faults injected while running).
    pub fn add_fault(&mut self, spec: &FaultSpec, origin_ms: i64) -> Result<(), String> {
        if spec.device != "*" && !self.scenario.meters.iter().any(|m| m.device == spec.device) {
            return Err(format!("no meter `{}`", spec.device));
        }
        let fault = spec
            .resolve(origin_ms)
            .map_err(|(key, msg)| format!("{key}: {msg}"))?;
        if fault.kind == FaultKind::Rollover {
            self.arrange_rollover(&fault)?;
        }
        let i = self.faults.len();
        self.pending.push(Pending {
            at_ms: fault.from_ms.max(self.now_ms),
            what: Happening::FaultStart(i),
        });
        if !fault.kind.is_instant() {
            self.pending.push(Pending {
                at_ms: fault.to_ms,
                what: Happening::FaultEnd(i),
            });
        }
        self.pending.sort_by_key(|p| p.at_ms);
        self.faults.push(fault);
        Ok(())
    }

    /// Sets a meter's counter so that it reaches its rollover exactly when the fault starts.
    fn arrange_rollover(&mut self, fault: &Fault) -> Result<(), String> {
        let now = self.now_ms;
        for m in self
            .scenario
            .meters
            .iter_mut()
            .filter(|m| fault.device == "*" || m.device == fault.device)
        {
            let mut unit = self.scenario.units[m.unit_index].clone();
            let mut sink = vec![0.0; unit.totals.len()];
            unit.advance(now, fault.from_ms.max(now), &mut sink);
            let total_then = unit.totals[m.flow_index];
            let rollover = m.model.rollover();
            // counter(total_then) must be a multiple of the rollover.
            let shown_then = m.counter(total_then);
            let bump = rollover - shown_then.rem_euclid(rollover);
            m.initial += bump;
            if let Some((at, reading)) = m.replaced {
                m.replaced = Some((at, reading + bump));
            }
        }
        Ok(())
    }

    fn schedule_anode_effects(&mut self, hour: i64) {
        for (i, u) in self.scenario.units.iter().enumerate() {
            if let Some((start, end)) = u.anode_effect(hour) {
                if start >= self.now_ms {
                    self.pending.push(Pending {
                        at_ms: start,
                        what: Happening::AnodeEffect {
                            unit: i,
                            end_ms: end,
                        },
                    });
                }
            }
        }
    }

    /// Integrates the plant up to `t_ms`, stopping at every event and whole hour on the way.
    pub fn advance_to(&mut self, t_ms: i64) {
        while self.now_ms < t_ms {
            let hour_end = self.now_ms - self.now_ms.rem_euclid(HOUR_MS) + HOUR_MS;
            let next_event = self
                .pending
                .first()
                .map_or(i64::MAX, |p| p.at_ms.max(self.now_ms));
            let to = hour_end.min(t_ms).min(next_event);
            // On a fixed one-minute grid, so that the enterprises' holders and controls come out
            // the same however the clock is read (the units integrate each minute in seconds).
            let mut t = self.now_ms;
            while t < to {
                let next = (t - t.rem_euclid(DERIVED_STEP_MS) + DERIVED_STEP_MS).min(to);
                self.step(t, next);
                t = next;
            }
            self.now_ms = to;
            self.note_rollovers();
            while self.pending.first().is_some_and(|p| p.at_ms <= self.now_ms) {
                let p = self.pending.remove(0);
                self.happen(p);
            }
            if to == hour_end {
                self.close_interval();
                self.schedule_anode_effects(hour_end.div_euclid(HOUR_MS));
                self.pending.sort_by_key(|p| p.at_ms);
            }
        }
    }

    /// Integrates the process units over one step of at most a minute, then draws each
    /// enterprise's conversion units and boundary from what its process units did.
    fn step(&mut self, from: i64, to: i64) {
        let scenario = &mut self.scenario;
        // What each process unit did over the step.
        let mut steps: Vec<Option<Vec<f64>>> = Vec::with_capacity(scenario.units.len());
        for (unit, acc) in scenario.units.iter_mut().zip(&mut self.interval) {
            if unit.kind.is_derived() {
                steps.push(None);
                continue;
            }
            let before = unit.totals.clone();
            unit.advance(from, to, acc);
            steps.push(Some(
                unit.totals
                    .iter()
                    .zip(&before)
                    .map(|(a, b)| a - b)
                    .collect(),
            ));
        }
        let mid = from + (to - from) / 2;
        for e in 0..scenario.units.len() {
            if scenario.units[e].kind != UnitKind::Enterprise {
                continue;
            }
            let members: Vec<usize> = (0..scenario.units.len())
                .filter(|&i| i != e && scenario.enterprise_of[i] == Some(e))
                .collect();
            let (process, conversion): (Vec<usize>, Vec<usize>) = members
                .into_iter()
                .partition(|&i| !scenario.units[i].kind.is_derived());
            let mut done: Vec<(UnitKind, Vec<f64>)> = process
                .iter()
                .map(|&i| (scenario.units[i].kind, steps[i].clone().unwrap_or_default()))
                .collect();
            let runs: Vec<(UnitKind, bool)> = conversion
                .iter()
                .map(|&i| {
                    let unit = &scenario.units[i];
                    (unit.kind, unit.state_at(mid).0 != State::Stopped)
                })
                .collect();
            let holder = HOLDER_START_M3 + scenario.units[e].totals[holder_flow()];
            let q = enterprise_step(&mut done, &runs, holder, mid, to - from);
            // A furnace switched to coke-oven gas burnt other gas than its model's.
            for (&i, (_, after)) in process.iter().zip(&done) {
                let before = steps[i].as_deref().unwrap_or_default();
                add(
                    &mut scenario.units[i].totals,
                    &mut self.interval[i],
                    after,
                    before,
                );
            }
            for (&i, q) in conversion.iter().zip(&q.conversion) {
                add(&mut scenario.units[i].totals, &mut self.interval[i], q, &[]);
            }
            add(
                &mut scenario.units[e].totals,
                &mut self.interval[e],
                &q.boundary,
                &[],
            );
        }
    }

    fn event(&mut self, event: &str, unit: Option<String>, device: Option<String>, detail: String) {
        self.closed.push(TruthLine::Event(TruthEvent {
            at: rfc3339(self.now_ms),
            event: event.into(),
            unit,
            device,
            detail,
        }));
    }

    fn happen(&mut self, p: Pending) {
        match p.what {
            Happening::State { unit, change } => {
                let id = self.scenario.units[unit].id.clone();
                self.event("state", Some(id), None, format!("{:?}", change.state));
            }
            Happening::AnodeEffect { unit, end_ms } => {
                let id = self.scenario.units[unit].id.clone();
                self.event(
                    "anode_effect",
                    Some(id),
                    None,
                    format!("until {}", rfc3339(end_ms)),
                );
            }
            Happening::FaultStart(i) => {
                let fault = self.faults[i].clone();
                for m in 0..self.scenario.meters.len() {
                    let meter = &self.scenario.meters[m];
                    if !(fault.device == "*" || fault.device == meter.device) {
                        continue;
                    }
                    match fault.kind {
                        FaultKind::Replace { reading } => {
                            let total =
                                self.scenario.units[meter.unit_index].totals[meter.flow_index];
                            self.scenario.meters[m].replaced = Some((total, reading));
                            self.wraps[m] = 0;
                        }
                        FaultKind::Freeze => self.frozen[m] = Some(self.shown(m)),
                        _ => {}
                    }
                }
                let until = if fault.kind.is_instant() {
                    String::new()
                } else {
                    format!(" until {}", rfc3339(fault.to_ms))
                };
                self.event(
                    "fault_start",
                    None,
                    Some(fault.device.clone()),
                    format!("{}{until}", fault.describe()),
                );
            }
            Happening::FaultEnd(i) => {
                let fault = self.faults[i].clone();
                if fault.kind == FaultKind::Freeze {
                    for m in 0..self.scenario.meters.len() {
                        if fault.device == "*" || fault.device == self.scenario.meters[m].device {
                            self.frozen[m] = None;
                        }
                    }
                }
                self.event(
                    "fault_end",
                    None,
                    Some(fault.device.clone()),
                    fault.describe(),
                );
            }
        }
    }

    fn note_rollovers(&mut self) {
        for m in 0..self.scenario.meters.len() {
            let meter = &self.scenario.meters[m];
            let counter =
                meter.counter(self.scenario.units[meter.unit_index].totals[meter.flow_index]);
            let wraps = (counter / meter.model.rollover()).floor() as i64;
            if wraps > self.wraps[m] {
                self.wraps[m] = wraps;
                let (device, rollover) = (meter.device.clone(), meter.model.rollover());
                self.event(
                    "rollover",
                    None,
                    Some(device),
                    format!("counter passed {rollover} and restarted from zero"),
                );
            }
        }
    }

    /// Closes the interval in progress even if the hour is not over (at shutdown).
    pub fn close_interval(&mut self) {
        if self.now_ms == self.interval_start_ms {
            return;
        }
        let start = rfc3339(self.interval_start_ms);
        let end = rfc3339(self.now_ms);
        let units = self.scenario.units.iter().zip(&mut self.interval);
        for (i, (unit, acc)) in units.enumerate() {
            let mut rec = TruthRecord {
                unit: unit.id.clone(),
                kind: unit.kind,
                enterprise: self.scenario.enterprise_of[i]
                    .map(|e| self.scenario.units[e].id.clone()),
                start: start.clone(),
                end: end.clone(),
                product_t: 0.0,
                water_m3: 0.0,
                flows: Vec::new(),
            };
            for (f, qty) in unit.kind.flows().iter().zip(acc.iter_mut()) {
                match f.role {
                    Role::Product => rec.product_t += *qty,
                    Role::Water => rec.water_m3 += *qty,
                    _ => {}
                }
                rec.flows.push(TruthFlow {
                    flow: f.name.into(),
                    carrier: f.carrier.into(),
                    role: f.role,
                    unit: f.unit.into(),
                    qty: *qty,
                });
                *qty = 0.0;
            }
            self.closed.push(TruthLine::Interval(rec));
        }
        self.interval_start_ms = self.now_ms;
    }

    /// Truth lines closed since the last call.
    pub fn take_closed(&mut self) -> Vec<TruthLine> {
        std::mem::take(&mut self.closed)
    }

    /// Index of the meter at `unit_id`.
    pub fn meter_at(&self, unit_id: u8) -> Option<usize> {
        self.scenario
            .meters
            .iter()
            .position(|m| m.unit_id == unit_id)
    }

    /// Counts a request to meter `m`; returns how many it has been asked, this one included.
    pub fn ask(&mut self, m: usize) -> u64 {
        self.asked[m] += 1;
        self.asked[m]
    }

    /// The faults acting on meter `m` now, of the kinds a link or device shows.
    pub fn active_faults(&self, m: usize) -> impl Iterator<Item = &Fault> {
        let device = &self.scenario.meters[m].device;
        let now = self.now_ms;
        self.faults.iter().filter(move |f| f.applies(device, now))
    }

    /// What meter `m` shows now, faults included.
    pub fn shown(&self, m: usize) -> Reading {
        let meter = &self.scenario.meters[m];
        if let Some(frozen) = self.frozen[m] {
            return Reading {
                clock_ms: self.now_ms,
                ..frozen
            };
        }
        let unit = &self.scenario.units[meter.unit_index];
        let mut counter = meter.counter(unit.totals[meter.flow_index]);
        for f in self.active_faults(m) {
            if let FaultKind::Spike { magnitude } = f.kind {
                counter += magnitude;
            }
        }
        Reading {
            clock_ms: self.now_ms,
            counter,
            rate_per_h: unit.rate(meter.flow_index, self.now_ms) * 3600.0,
        }
    }

    /// Registers `addr..addr+count` of `table` of the meter at `unit_id`, as of now.
    pub fn read(
        &self,
        unit_id: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        // What a serial-to-Ethernet gateway answers for a device that is not on its line.
        let m = self
            .meter_at(unit_id)
            .ok_or(ExceptionCode::GatewayTargetDevice)?;
        let meter = &self.scenario.meters[m];
        meter
            .model
            .image(self.shown(m))
            .read(table, addr, count)
            .ok_or(ExceptionCode::IllegalDataAddress)
    }
}

/// Adds `q - base` (base missing: zero) to a unit's totals and its interval's quantities.
fn add(totals: &mut [f64], interval: &mut [f64], q: &[f64], base: &[f64]) {
    for (k, q) in q.iter().enumerate() {
        let d = q - base.get(k).copied().unwrap_or(0.0);
        totals[k] += d;
        interval[k] += d;
    }
}

/// The enterprise's converter-gas holder among its flows.
fn holder_flow() -> usize {
    UnitKind::Enterprise
        .flows()
        .iter()
        .position(|f| f.name == "ldg_holder")
        .expect("the enterprise has a holder")
}

pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::KindName;
    use crate::model::HOLDER_START_M3;
    use ems_core::{decode, DataType, WordOrder};

    const T0: i64 = 1_767_196_800_000; // 2026-01-01T00:00:00+08:00 is 2025-12-31T16:00:00Z

    fn intervals(lines: &[TruthLine]) -> Vec<&TruthRecord> {
        lines
            .iter()
            .filter_map(|l| {
                if let TruthLine::Interval(r) = l {
                    Some(r)
                } else {
                    None
                }
            })
            .collect()
    }

    fn events<'a>(lines: &'a [TruthLine], kind: &str) -> Vec<&'a TruthEvent> {
        lines
            .iter()
            .filter_map(|l| {
                if let TruthLine::Event(e) = l {
                    Some(e)
                } else {
                    None
                }
            })
            .filter(|e| e.event == kind)
            .collect()
    }

    fn belt_total(p: &Plant, unit_id: u8) -> f64 {
        let regs = p.read(unit_id, Table::Holding, 2, 2).unwrap(); // belt scale: u32 in 0.01 t
        decode(&regs, DataType::U32, WordOrder::ABCD).unwrap() * 0.01
    }

    fn spec(device: &str, kind: KindName, at_h: f64, for_h: f64) -> FaultSpec {
        FaultSpec {
            device: device.into(),
            kind,
            at_h,
            for_h,
            code: None,
            delay_ms: None,
            reading: None,
            magnitude: None,
            truncate: None,
            registers: None,
            silent: None,
            baud: None,
            from: None,
            to: None,
            every: None,
        }
    }

    #[test]
    fn truth_closes_on_whole_hours_and_matches_meter_movement() {
        let scenario = Scenario::load("demo").unwrap();
        let coke = scenario
            .meters
            .iter()
            .find(|m| m.device == "bf1-coke")
            .unwrap()
            .unit_id;
        let units = scenario.units.len();
        let mut plant = Plant::new(scenario, T0 + 1_800_000);
        let before = belt_total(&plant, coke);
        plant.advance_to(T0 + 3 * 3_600_000 + 60_000);
        let lines = plant.take_closed();
        let truth = intervals(&lines);
        // Half an hour, then two whole hours, for each unit.
        assert_eq!(truth.len(), 3 * units);
        assert_eq!(truth[units].start, "2025-12-31T17:00:00.000Z");
        assert_eq!(truth[units].end, "2025-12-31T18:00:00.000Z");
        let coke_qty = |recs: &[&TruthRecord]| -> f64 {
            recs.iter()
                .filter(|r| r.unit == "bf1")
                .flat_map(|r| r.flows.iter().filter(|f| f.flow == "coke"))
                .map(|f| f.qty)
                .sum()
        };
        let true_coke = coke_qty(&truth);
        plant.close_interval();
        let tail = plant.take_closed();
        let tail = coke_qty(&intervals(&tail));
        let moved = belt_total(&plant, coke) - before;
        assert!(
            (moved - (true_coke + tail)).abs() <= 0.02,
            "meter moved {moved}, truth {true_coke} + {tail}"
        );
    }

    #[test]
    fn the_enterprise_boundary_follows_its_units_with_losses_stock_and_flare() {
        let mut plant = Plant::new(Scenario::load("demo").unwrap(), T0);
        plant.advance_to(T0 + 6 * 3_600_000);
        let lines = plant.take_closed();
        let truth = intervals(&lines);
        let qty = |unit: Option<&str>, role: Role, carrier: &str| -> f64 {
            truth
                .iter()
                .filter(|r| unit.is_none_or(|u| r.unit == u))
                .flat_map(|r| &r.flows)
                .filter(|f| f.role == role && f.carrier == carrier)
                .map(|f| f.qty)
                .sum()
        };
        // What the units inside one enterprise's boundary did.
        let inside = |enterprise: &str, role: Role, carrier: &str| -> f64 {
            truth
                .iter()
                .filter(|r| r.enterprise.as_deref() == Some(enterprise) && r.unit != enterprise)
                .flat_map(|r| &r.flows)
                .filter(|f| f.role == role && f.carrier == carrier)
                .map(|f| f.qty)
                .sum()
        };
        let works = Some("works");
        // Each enterprise's grid: what its units draw (the oxygen plant and the power plant's
        // own use among them) plus 1.5 % losses and the 1.5 MW nobody meters, less TRT,
        // waste-heat and the power plant's generation, over six hours; nothing of another's.
        for (enterprise, members) in [
            ("works", &["bf1", "bof1", "rhf1", "o2p1", "cpp1"][..]),
            ("cement", &["kiln1"][..]),
            ("smelter", &["pot1"][..]),
        ] {
            let member_of: Vec<&str> = truth
                .iter()
                .filter(|r| r.enterprise.as_deref() == Some(enterprise) && r.unit != enterprise)
                .map(|r| r.unit.as_str())
                .collect();
            assert!(
                member_of.iter().all(|u| members.contains(u)),
                "{member_of:?}"
            );
            let grid = inside(enterprise, Role::Consumed, "electricity")
                * (1.0 + crate::model::LINE_LOSS)
                + crate::model::UNMETERED_AUX_KW * 6.0
                - inside(enterprise, Role::Recovered, "electricity");
            let got = qty(Some(enterprise), Role::Purchase, "electricity");
            assert!(
                (got - grid).abs() < 1e-6 * grid,
                "{enterprise}: {got} vs {grid}"
            );
        }
        let coal = qty(Some("cement"), Role::Purchase, "raw_coal");
        assert!((coal - qty(Some("kiln1"), Role::Consumed, "raw_coal")).abs() < 1e-6 * coal);
        assert_eq!(qty(works, Role::Purchase, "raw_coal"), 0.0);
        // Coke bought less coke burnt is what the yard gained.
        let yard = qty(works, Role::Stock, "coke");
        let bought = qty(works, Role::Purchase, "coke");
        let burnt = qty(None, Role::Consumed, "coke");
        assert!((bought - burnt - yard).abs() < 1e-6 * burnt);
        assert!(yard.abs() > 1.0, "deliveries swing over the day: {yard}");
        // The gas the stoves leave is flared (4 %), burnt by the power plant or sold.
        let surplus =
            qty(Some("bf1"), Role::Recovered, "bfg") - qty(Some("bf1"), Role::Consumed, "bfg");
        let sold = qty(works, Role::Export, "bfg");
        let flared = qty(works, Role::Flare, "bfg");
        let cpp_bfg = qty(Some("cpp1"), Role::Consumed, "bfg");
        assert!((sold + flared + cpp_bfg - surplus).abs() < 1e-6 * surplus);
        assert!((flared / surplus - crate::model::BFG_FLARED).abs() < 1e-9);
        let cpp_share = cpp_bfg / (surplus - flared);
        assert!(
            (cpp_share - crate::model::CPP_BFG_SHARE).abs() < 1e-9,
            "{cpp_share}"
        );
        // The converter's gas goes into the holder, which the furnace and the power plant
        // draw from: what it gained is the rest, and it neither ran dry nor vented.
        let made = qty(Some("bof1"), Role::Recovered, "converter_gas");
        let holder = qty(works, Role::Stock, "converter_gas");
        let burnt = qty(Some("rhf1"), Role::Consumed, "converter_gas")
            + qty(Some("cpp1"), Role::Consumed, "converter_gas");
        assert!(
            (made - burnt - holder).abs() < 1e-6 * made,
            "{made} {burnt} {holder}"
        );
        assert!(qty(Some("cpp1"), Role::Consumed, "converter_gas") > 0.2 * made);
        assert_eq!(qty(works, Role::Flare, "converter_gas"), 0.0);
        let m = plant
            .scenario()
            .meters
            .iter()
            .position(|m| m.device == "works-ldg-holder")
            .unwrap();
        assert!((plant.shown(m).counter - (HOLDER_START_M3 + holder)).abs() < 1e-6);
        // The power plant: gross generation from the heat of its gases, its own use a share.
        let generation = qty(Some("cpp1"), Role::Recovered, "electricity");
        let heat = cpp_bfg * crate::model::BFG_KJ_PER_M3
            + qty(Some("cpp1"), Role::Consumed, "converter_gas") * crate::model::LDG_KJ_PER_M3;
        assert!(
            (generation - heat * crate::model::CPP_EFFICIENCY / 3_600.0).abs() < 1e-6 * generation
        );
        let own_use = qty(Some("cpp1"), Role::Consumed, "electricity");
        assert!((own_use - crate::model::CPP_OWN_USE * generation).abs() < 1e-6 * own_use);
        // The oxygen plant makes what the furnace and the converter take; none is bought.
        for medium in ["oxygen", "nitrogen"] {
            let made = qty(Some("o2p1"), Role::Recovered, medium);
            let used = qty(Some("bof1"), Role::Consumed, medium)
                + qty(Some("bf1"), Role::Consumed, medium);
            assert!(used > 0.0 && (made - used).abs() < 1e-6 * used, "{medium}");
            assert_eq!(qty(works, Role::Purchase, medium), 0.0);
        }
        let oxygen_kwh = qty(Some("o2p1"), Role::Consumed, "electricity");
        let oxygen = qty(Some("o2p1"), Role::Recovered, "oxygen");
        assert!((oxygen_kwh - crate::model::OXYGEN_KWH_PER_M3 * oxygen).abs() < 1e-6 * oxygen_kwh);
        // The site's intake: its units' water, a tenth more no unit meters, and the power
        // plant's cooling-tower make-up.
        let intake = qty(works, Role::Water, "water");
        let units_water = inside("works", Role::Water, "water");
        let want = units_water * (1.0 + crate::model::WATER_UNMETERED)
            + generation * crate::model::CPP_MAKEUP_M3_PER_KWH;
        assert!((intake - want).abs() < 1e-6 * intake, "{intake} vs {want}");
        // The works still buys power: its own generation covers part of its use.
        assert_eq!(qty(works, Role::Export, "electricity"), 0.0);
        assert!(qty(works, Role::Purchase, "electricity") > 0.2 * generation);
        // A level meter shows the yard's stock.
        let m = plant
            .scenario()
            .meters
            .iter()
            .position(|m| m.device == "works-coke-yard")
            .unwrap();
        assert!((plant.shown(m).counter - (5_000.0 + yard)).abs() < 1e-6);
    }

    #[test]
    fn the_holder_vents_when_the_power_plant_stops_and_the_furnace_switches_gas_when_it_is_empty() {
        let mut scenario = Scenario::load("demo").unwrap();
        let at = |id: &str| scenario.units.iter().position(|u| u.id == id).unwrap();
        let (cpp, bof) = (at("cpp1"), at("bof1"));
        scenario
            .schedule
            .push((cpp, 0.0, crate::model::State::Stopped));
        scenario
            .schedule
            .push((cpp, 6.0, crate::model::State::Normal));
        scenario
            .schedule
            .push((bof, 6.0, crate::model::State::Stopped));
        let mut plant = Plant::new(scenario, T0);
        plant.advance_to(T0 + 14 * 3_600_000);
        let lines = plant.take_closed();
        let truth = intervals(&lines);
        let hour = |unit: &str, h: usize, role: Role, carrier: &str| -> f64 {
            truth
                .iter()
                .filter(|r| r.unit == unit)
                .nth(h)
                .unwrap()
                .flows
                .iter()
                .filter(|f| f.role == role && f.carrier == carrier)
                .map(|f| f.qty)
                .sum()
        };
        // The power plant stopped: the holder fills to its top and vents the converter's gas.
        let vented: f64 = (0..6)
            .map(|h| hour("works", h, Role::Flare, "converter_gas"))
            .sum();
        assert!(vented > 10_000.0, "vented {vented}");
        assert_eq!(hour("cpp1", 2, Role::Recovered, "electricity"), 0.0);
        // The converter stopped: the power plant draws the holder down to its reserve, the
        // furnace burns it empty and then fires coke-oven gas of the same heat.
        let level: f64 = crate::model::HOLDER_START_M3
            + (0..14)
                .map(|h| hour("works", h, Role::Stock, "converter_gas"))
                .sum::<f64>();
        assert!(level.abs() < 1e-6, "the holder ran dry: {level}");
        let heat = |h| {
            hour("rhf1", h, Role::Consumed, "converter_gas") * crate::model::LDG_KJ_PER_M3
                + hour("rhf1", h, Role::Consumed, "coke_oven_gas") * crate::model::COG_KJ_PER_M3
        };
        let per_t = |h| heat(h) / hour("rhf1", h, Role::Product, "billets");
        assert!(hour("rhf1", 13, Role::Consumed, "converter_gas").abs() < 1e-6);
        let (before, after) = (per_t(1), per_t(13));
        assert!(
            ((after - before) / before).abs() < 0.1,
            "the same heat a tonne: {before} kJ/t then {after}"
        );
    }

    #[test]
    fn unmapped_addresses_and_absent_devices_are_refused() {
        let plant = Plant::new(Scenario::load("demo").unwrap(), T0);
        assert_eq!(
            plant.read(11, Table::Holding, 3, 3),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            plant.read(200, Table::Holding, 0, 4),
            Err(ExceptionCode::GatewayTargetDevice)
        );
        assert_eq!(plant.read(11, Table::Holding, 0, 4).map(|r| r.len()), Ok(4));
    }

    #[test]
    fn replacement_rollover_freeze_and_spike_show_in_the_registers_and_the_truth() {
        let scenario = Scenario::load("demo").unwrap();
        let coke = scenario
            .meters
            .iter()
            .find(|m| m.device == "bf1-coke")
            .unwrap()
            .unit_id;
        let mut plant = Plant::new(scenario, T0);
        plant
            .add_fault(
                &FaultSpec {
                    reading: Some(5.0),
                    ..spec("bf1-coke", KindName::Replace, 1.0, 0.0)
                },
                T0,
            )
            .unwrap();
        plant.advance_to(T0 + 3_600_000 + 60_000);
        let after_swap = belt_total(&plant, coke);
        assert!(
            (5.0..7.0).contains(&after_swap),
            "a new meter starts near its reading: {after_swap}"
        );

        plant
            .add_fault(
                &spec("bf1-coke", KindName::Freeze, 0.0, 0.5),
                plant.now_ms(),
            )
            .unwrap();
        plant.advance_to(plant.now_ms() + 1_000);
        let frozen = belt_total(&plant, coke);
        plant.advance_to(plant.now_ms() + 600_000);
        assert_eq!(belt_total(&plant, coke), frozen, "frozen");
        plant.advance_to(plant.now_ms() + 1_800_000);
        assert!(
            belt_total(&plant, coke) > frozen + 10.0,
            "catches up after the freeze"
        );

        let base = belt_total(&plant, coke);
        plant
            .add_fault(
                &FaultSpec {
                    magnitude: Some(1_000.0),
                    ..spec("bf1-coke", KindName::Spike, 0.0, 0.01)
                },
                plant.now_ms(),
            )
            .unwrap();
        plant.advance_to(plant.now_ms() + 1_000);
        assert!(belt_total(&plant, coke) > base + 999.0, "spike");
        plant.advance_to(plant.now_ms() + 60_000);
        assert!(belt_total(&plant, coke) < base + 100.0, "spike over");

        plant
            .add_fault(
                &spec("bf1-coke", KindName::Rollover, 0.5, 0.0),
                plant.now_ms(),
            )
            .unwrap();
        plant.advance_to(plant.now_ms() + 1_900_000);
        assert!(
            belt_total(&plant, coke) < 20.0,
            "wrapped at the register width: {}",
            belt_total(&plant, coke)
        );

        let lines = plant.take_closed();
        assert_eq!(events(&lines, "rollover").len(), 1);
        let starts = events(&lines, "fault_start");
        assert_eq!(starts.len(), 4, "{starts:?}");
        assert_eq!(
            events(&lines, "fault_end").len(),
            2,
            "freeze and spike ended"
        );
    }

    #[test]
    fn states_and_anode_effects_are_logged() {
        let mut scenario = Scenario::load("demo").unwrap();
        let bof = scenario.units.iter().position(|u| u.id == "bof1").unwrap();
        scenario
            .schedule
            .push((bof, 1.0, crate::model::State::NoRecovery));
        let mut plant = Plant::new(scenario, T0);
        plant.advance_to(T0 + 24 * 3_600_000);
        let lines = plant.take_closed();
        let states = events(&lines, "state");
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].at, rfc3339(T0 + 3_600_000));
        assert!(!events(&lines, "anode_effect").is_empty());
    }
}
