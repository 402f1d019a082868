//! The running plant: the models advanced on the simulated clock, read through meters, and
//! the hourly truth collected as it closes. Pure state; the Modbus service and the truth writer
//! drive it.

use chrono::{SecondsFormat, TimeZone, Utc};
use tokio_modbus::ExceptionCode;

use crate::meter::{Reading, Table};
use crate::model::Role;
use crate::scenario::Scenario;
use crate::truth::{TruthFlow, TruthRecord};

const HOUR_MS: i64 = 3_600_000;

pub struct Plant {
    scenario: Scenario,
    /// Simulated time up to which the models are integrated.
    now_ms: i64,
    /// Start of the truth interval being accumulated.
    interval_start_ms: i64,
    /// Per unit, per flow: quantity in the current truth interval.
    interval: Vec<Vec<f64>>,
    closed: Vec<TruthRecord>,
}

impl Plant {
    pub fn new(scenario: Scenario, start_ms: i64) -> Self {
        let interval = scenario
            .units
            .iter()
            .map(|u| vec![0.0; u.totals.len()])
            .collect();
        Plant {
            scenario,
            now_ms: start_ms,
            interval_start_ms: start_ms,
            interval,
            closed: Vec::new(),
        }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Integrates the plant up to `t_ms`, closing truth intervals at every whole hour.
    pub fn advance_to(&mut self, t_ms: i64) {
        while self.now_ms < t_ms {
            let hour_end = self.now_ms - self.now_ms.rem_euclid(HOUR_MS) + HOUR_MS;
            let to = hour_end.min(t_ms);
            for (unit, acc) in self.scenario.units.iter_mut().zip(&mut self.interval) {
                unit.advance(self.now_ms, to, acc);
            }
            self.now_ms = to;
            if to == hour_end {
                self.close_interval();
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
        for (unit, acc) in self.scenario.units.iter().zip(&mut self.interval) {
            let mut rec = TruthRecord {
                unit: unit.id.clone(),
                kind: unit.kind,
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
            self.closed.push(rec);
        }
        self.interval_start_ms = self.now_ms;
    }

    /// Truth records closed since the last call.
    pub fn take_closed(&mut self) -> Vec<TruthRecord> {
        std::mem::take(&mut self.closed)
    }

    /// Registers `addr..addr+count` of `table` of the meter at `unit_id`, as of now.
    pub fn read(
        &self,
        unit_id: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        let meter = self
            .scenario
            .meters
            .iter()
            .find(|m| m.unit_id == unit_id)
            // What a serial-to-Ethernet gateway answers for a device that is not on its line.
            .ok_or(ExceptionCode::GatewayTargetDevice)?;
        let unit = &self.scenario.units[meter.unit_index];
        let reading = Reading {
            clock_ms: self.now_ms,
            counter: meter.counter(unit.totals[meter.flow_index]),
            rate_per_h: unit.rate(meter.flow_index, self.now_ms) * 3600.0,
        };
        meter
            .model
            .image(reading)
            .read(table, addr, count)
            .ok_or(ExceptionCode::IllegalDataAddress)
    }
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
    use ems_core::{decode, DataType, WordOrder};

    const T0: i64 = 1_767_196_800_000; // 2026-01-01T00:00:00+08:00 is 2025-12-31T16:00:00Z

    #[test]
    fn truth_closes_on_whole_hours_and_matches_meter_movement() {
        let scenario = Scenario::load("demo").unwrap();
        let coke = scenario
            .meters
            .iter()
            .find(|m| m.device == "bf1-coke")
            .unwrap()
            .unit_id;
        let mut plant = Plant::new(scenario, T0 + 1_800_000);
        let read_total = |p: &Plant| {
            let regs = p.read(coke, Table::Holding, 2, 2).unwrap(); // belt scale: u32 in 0.01 t
            decode(&regs, DataType::U32, WordOrder::ABCD).unwrap() * 0.01
        };
        let before = read_total(&plant);
        plant.advance_to(T0 + 3 * 3_600_000 + 60_000);
        let truth = plant.take_closed();
        // Half an hour, then two whole hours, for each of the four units.
        assert_eq!(truth.len(), 3 * 4);
        assert_eq!(truth[4].start, "2025-12-31T17:00:00.000Z");
        assert_eq!(truth[4].end, "2025-12-31T18:00:00.000Z");
        let true_coke: f64 = truth
            .iter()
            .filter(|r| r.unit == "bf1")
            .flat_map(|r| r.flows.iter().filter(|f| f.flow == "coke").map(|f| f.qty))
            .sum();
        plant.close_interval();
        let last = plant.take_closed();
        let tail: f64 = last
            .iter()
            .filter(|r| r.unit == "bf1")
            .map(|r| r.flows[1].qty)
            .sum();
        let moved = read_total(&plant) - before;
        assert!(
            (moved - (true_coke + tail)).abs() <= 0.02,
            "meter moved {moved}, truth {true_coke} + {tail}"
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
}
