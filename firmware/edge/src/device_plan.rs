//! A device's request plan: which reads cover its points (ems-core's planner, around what the
//! device refuses, for what its requests cost), how each point is decoded from its read, and
//! what one poll found. Pure: no link, no clock.

use ems_core::plan::{plan, CostFit, LinkCost, PlanError, PlannedRequest, Span};
use ems_core::wire::PointValue;
use ems_core::{decode, Quality};

use crate::config::Device;
use crate::profile::{PointDef, Table};

/// One planned read request.
#[derive(Debug, Clone)]
pub struct Read {
    pub table: Table,
    pub start: u16,
    pub len: u16,
    /// Indices into the profile's points.
    pub points: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub device: Device,
    pub reads: Vec<Read>,
    /// Registers the device refused (exception 02 on a bridged read): never read again.
    pub refused: Vec<(Table, Span)>,
    /// The request costs planned for: the link's model, or what this device's reads were
    /// measured to take.
    pub cost: LinkCost,
}

impl DevicePlan {
    pub fn new(device: Device) -> Result<Self, PlanError> {
        let cost = device.link.cost();
        DevicePlan::with_cost(device, Vec::new(), cost)
    }

    /// Plans for `cost` around registers the device is known to refuse.
    pub fn with_cost(
        device: Device,
        refused: Vec<(Table, Span)>,
        cost: LinkCost,
    ) -> Result<Self, PlanError> {
        let max = device.profile.max_registers;
        let mut p = DevicePlan::planned_by(device, refused, |spans, forbidden| {
            plan(spans, cost, max, forbidden)
        })?;
        p.cost = cost;
        Ok(p)
    }

    /// This device planned again for the request costs its reads were measured to take, if
    /// that plan reads it at least 5 % faster by that measure (timing noise must not make
    /// plans flap).
    pub fn for_measured_cost(&self, fit: &CostFit) -> Option<DevicePlan> {
        let measured = fit.cost(self.device.link.cost())?;
        let took = |p: &DevicePlan| -> f64 {
            p.reads
                .iter()
                .map(|r| measured.request(u32::from(r.len)))
                .sum()
        };
        let better =
            DevicePlan::with_cost(self.device.clone(), self.refused.clone(), measured).ok()?;
        (took(&better) < 0.95 * took(self)).then_some(better)
    }

    /// The plan `planner` makes of each register table's points (their spans, and the spans
    /// refused there); benchmarks compare other planners through this.
    pub fn planned_by(
        device: Device,
        refused: Vec<(Table, Span)>,
        mut planner: impl FnMut(&[Span], &[Span]) -> Result<Vec<PlannedRequest>, PlanError>,
    ) -> Result<Self, PlanError> {
        let mut reads = Vec::new();
        if device.profile.dialect != crate::profile::Dialect::Modbus {
            // DL/T 645 and CJ/T 188: one data identifier a request, all the points it answers
            // read from it; the meter's clock first and the counters right after it, so that
            // the time a poll is stamped with is the counters' own (a request takes tens of
            // milliseconds, a poll of ten identifiers a good part of a second).
            let points = &device.profile.points;
            let rank = |i: usize| match (points[i].role, points[i].counter) {
                (crate::profile::PointRole::Clock, _) => 0,
                (_, true) => 1,
                _ => 2,
            };
            for (i, p) in points.iter().enumerate() {
                let di = p.meter.map(|m| m.di);
                match reads
                    .iter_mut()
                    .find(|r: &&mut Read| points[r.points[0]].meter.map(|m| m.di) == di)
                {
                    Some(read) => read.points.push(i),
                    None => reads.push(Read {
                        table: Table::Holding,
                        start: 0,
                        len: 1,
                        points: vec![i],
                    }),
                }
            }
            reads.sort_by_key(|r| r.points.iter().map(|&i| rank(i)).min());
            return Ok(DevicePlan {
                cost: device.link.cost(),
                device,
                reads,
                refused,
            });
        }
        for table in [Table::Holding, Table::Input] {
            let forbidden: Vec<Span> = refused
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, s)| *s)
                .collect();
            let idx: Vec<usize> = device
                .profile
                .points
                .iter()
                .enumerate()
                .filter(|(_, p)| p.table == table)
                .map(|(i, _)| i)
                .collect();
            let spans: Vec<Span> = idx
                .iter()
                .map(|&i| {
                    let p = &device.profile.points[i];
                    Span {
                        start: p.address,
                        len: p.data_type.registers(),
                    }
                })
                .collect();
            for r in planner(&spans, &forbidden)? {
                reads.push(Read {
                    table,
                    start: r.start,
                    len: r.len,
                    points: r.points.iter().map(|&k| idx[k]).collect(),
                });
            }
        }
        Ok(DevicePlan {
            cost: device.link.cost(),
            device,
            reads,
            refused,
        })
    }

    /// The registers of `read` that no point asked for: what a bridged read added.
    pub fn bridged(&self, read: &Read) -> Vec<Span> {
        let points = &self.device.profile.points;
        let mut covered: Vec<(u32, u32)> = read
            .points
            .iter()
            .map(|&i| {
                let start = u32::from(points[i].address);
                (start, start + u32::from(points[i].data_type.registers()))
            })
            .collect();
        covered.sort_unstable();
        let mut out = Vec::new();
        let mut at = u32::from(read.start);
        for (a, b) in covered {
            if a > at {
                out.push(Span {
                    start: at as u16,
                    len: (a - at) as u16,
                });
            }
            at = at.max(b);
        }
        out
    }

    /// "N requests touching M registers for K points" (DL/T 645, CJ/T 188: "N requests for K
    /// points").
    pub fn summary(&self) -> String {
        if self.device.profile.dialect != crate::profile::Dialect::Modbus {
            return format!(
                "{} requests for {} points (one data identifier a request)",
                self.reads.len(),
                self.device.profile.points.len()
            );
        }
        let regs: u32 = self.reads.iter().map(|r| u32::from(r.len)).sum();
        format!(
            "{} requests touching {} registers for {} points",
            self.reads.len(),
            regs,
            self.device.profile.points.len()
        )
    }
}

/// Engineering value of one point from the registers of the read that covers it.
pub fn decode_point(def: &PointDef, read: &Read, regs: &[u16]) -> Result<f64, Quality> {
    let from = usize::from(def.address - read.start);
    let to = from + usize::from(def.data_type.registers());
    let raw = regs.get(from..to).ok_or(Quality::Decode)?;
    let v = decode(raw, def.data_type, def.order).map_err(|_| Quality::Decode)?;
    Ok(v * def.scale + def.offset)
}

/// The outcome of polling one device once.
pub struct Reading {
    pub points: Vec<PointValue>,
    /// The device's own clock, if it has one: read (ms), or why not.
    pub device_clock: Option<Result<i64, Quality>>,
    /// The link failed: the connection must be rebuilt.
    pub link_failed: bool,
    /// Registers found refused in this poll (the plan must avoid them from now on).
    pub refused: Vec<(Table, Span)>,
    /// The device refused a long read (exception 03), or ignored it while answering its first
    /// half: the length limit to plan with now, and how it showed.
    pub shorter: Option<(u16, &'static str)>,
    /// Registers and seconds of each request answered on its first try, for [`CostFit`].
    pub timings: Vec<(u16, f64)>,
    /// Seconds from the first try to the answer of each request answered only on a retry:
    /// a device slower than its fitted timeout (see [`crate::bus::TimeoutFit`]).
    pub answered_on_retry: Vec<f64>,
    /// Each failed request in plain words: which registers (or data identifier), and what
    /// went wrong (written to the log at most once a minute a device, see [`crate::log_limit`]).
    pub failures: Vec<String>,
}

/// Registers as a reader of a datasheet writes them: the table, the first and the last
/// (inclusive), in decimal and hex, and how many.
pub fn registers(table: Table, start: u16, len: u16) -> String {
    let last = u32::from(start) + u32::from(len.max(1)) - 1;
    let table = match table {
        Table::Holding => "holding",
        Table::Input => "input",
    };
    format!("{table} {start}-{last} (0x{start:04X}-0x{last:04X}, {len} registers)")
}

/// One request of `plan` in words: what it asks for and the points it reads.
pub fn describe(plan: &DevicePlan, read: &Read) -> String {
    let points = &plan.device.profile.points;
    let ids: Vec<&str> = read.points.iter().map(|&i| points[i].id.as_str()).collect();
    match read.points.first().and_then(|&i| points[i].meter) {
        Some(p) => format!(
            "data identifier {}: {}",
            plan.device.profile.dialect.di_text(p.di),
            ids.join(", ")
        ),
        None => format!(
            "{}: {}",
            registers(read.table, read.start, read.len),
            ids.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Meter;

    #[test]
    fn a_meter_is_asked_once_per_identifier_its_clock_first() {
        let lib = crate::profile::Library::built_in();
        let profile = lib.get("ems-sim-cjt188-water").unwrap().clone();
        let meter = Meter::parse(profile.dialect, "00000000000045").unwrap();
        let plan = DevicePlan::new(Device {
            id: "water".into(),
            link: "cjt188:///dev/ttyS2".parse().unwrap(),
            unit_id: 0,
            meter: Some(meter),
            profile,
            clock: crate::config::ClockSource::Device,
            timeout_ms: 1_000,
            min_timeout_ms: 100,
            retries: 1,
            factors: Default::default(),
        })
        .unwrap();
        let asked: Vec<String> = plan.reads.iter().map(|r| describe(&plan, r)).collect();
        assert_eq!(
            asked,
            [
                "data identifier FF01: clock",
                "data identifier 901F: total_m3, settlement_day_m3"
            ]
        );
        assert_eq!(
            plan.summary(),
            "2 requests for 3 points (one data identifier a request)"
        );
    }

    #[test]
    fn a_dlt645_block_is_one_request_and_each_value_is_read_at_its_offset() {
        // Forward active energy as a block (0001FF00): total, then tariffs 1-4, 4 bytes each.
        let text = "name = \"block\"\nprotocol = \"dlt645-2007\"\ndatasheet = \"a test of block reads\"\n[[points]]\nid = \"import_kwh\"\ndi = \"0001FF00\"\nformat = \"XXXXXX.XX\"\ncounter = true\n[[points]]\nid = \"import_kwh_t2\"\ndi = \"0001FF00\"\nbyte_offset = 8\nformat = \"XXXXXX.XX\"\ncounter = true\n[[points]]\nid = \"p_kw\"\ndi = \"02030000\"\nformat = \"XX.XXXX\"\nsigned = true\n";
        let mut lib = crate::profile::Library::default();
        lib.add(&ems_config::Source::embedded("block.toml", text))
            .unwrap();
        let profile = lib.get("block").unwrap().clone();
        let plan = DevicePlan::new(Device {
            id: "m".into(),
            link: "dlt645:///dev/ttyS1".parse().unwrap(),
            unit_id: 0,
            meter: Some(Meter::parse(profile.dialect, "000000000043").unwrap()),
            profile,
            clock: crate::config::ClockSource::System,
            timeout_ms: 1_000,
            min_timeout_ms: 100,
            retries: 1,
            factors: Default::default(),
        })
        .unwrap();
        let asked: Vec<String> = plan.reads.iter().map(|r| describe(&plan, r)).collect();
        assert_eq!(
            asked,
            [
                "data identifier 0001FF00: import_kwh, import_kwh_t2",
                "data identifier 02030000: p_kw"
            ]
        );
        // 1234.56 kWh in total, 0, 345.67 at tariff 2.
        let answer = [
            0x56, 0x34, 0x12, 0x00, 0, 0, 0, 0, 0x67, 0x45, 0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let points = &plan.device.profile.points;
        let value = |i: usize| points[i].meter.unwrap().decode(&answer);
        assert_eq!((value(0), value(1)), (Ok(1_234.56), Ok(345.67)));
    }
}
