//! Meters: how a flow's running total looks in Modbus registers, model by model.
//!
//! Each model's map is modelled on a meter common in Chinese plants and documented publicly (see
//! docs/simulators.md for the full maps and what each rests on). Maps are sparse like the real
//! devices': a read that touches an unmapped register is refused with exception 02. Counters wrap
//! where the real one does: at the register width, or at the display maximum.
//!
//! Every map also carries a simulator extension, a real-time clock at holding registers
//! 0xF000-0xF003 (u64, ms since the Unix epoch), so an edge can stamp samples with simulated time.

use ems_core::decode::encode;
use ems_core::{DataType, WordOrder};
use serde::{Deserialize, Serialize};

/// Address of the simulator's clock extension (holding, u64 ABCD, ms since the epoch).
pub const CLOCK_ADDRESS: u16 = 0xF000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeterModel {
    /// Generic totalizer: holding 0 clock u64, 4 total u64 x0.001, 8 rate f32 CDAB.
    EmsSimTotalizer,
    /// Three-phase energy meter modelled on the CHINT DTSU666: holding registers, float32 ABCD,
    /// import energy at 0x401E and export at 0x4028 in kWh.
    Dtsu666,
    /// Three-phase energy meter modelled on the Eastron SDM630: input registers (function 4),
    /// float32 ABCD, import kWh at 0x0048, export at 0x004A.
    Sdm630,
    /// Gas or steam flow computer: flow, temperature, pressure as float32 CDAB, total as u32
    /// CDAB in tenths, shown on 8+1 digits (wraps at 100 000 000.0).
    FlowTotalizer,
    /// Belt or weigh-scale integrator: rate u16 in 0.1 t/h, total u32 ABCD in 0.01 t (wraps at
    /// the register width, 42 949 672.96 t).
    BeltScale,
    /// Electromagnetic water meter: flow float32 BADC, total u32 DCBA in 0.01 m3.
    WaterMeter,
    /// Three-phase electricity meter on DL/T 645-2007 (not Modbus), at the address of its
    /// unit id in 12 digits (unit 41: 000000000041): forward active energy total and by tariff
    /// (XXXXXX.XX kWh, wraps at 1 000 000), phase voltages, currents, total power, power factor,
    /// present and maximum demand (its present power, XX.XXXX kW; the maximum stamped now), and
    /// the simulator's clock under data identifier FF000001 (ms, 16 digits).
    Dlt645Meter,
    /// Cold-water meter on CJ/T 188-2004 (type 10H, not Modbus), at the address of its unit id
    /// in 14 digits (unit 45: 00000000000045): the read of current data (901F) answers the
    /// current and settlement-day totals (XXXXXX.XX m3, unit code 2CH, wraps at 1 000 000),
    /// its time (Beijing time) and status; the simulator's clock under identifier FF01 (ms,
    /// 16 digits).
    Cjt188WaterMeter,
}

/// What a meter model speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Modbus,
    Dlt645,
    Cjt188,
}

/// The simulator's clock under DL/T 645: a data identifier of the manufacturer range.
pub const DLT645_CLOCK_DI: u32 = 0xFF00_0001;

/// The simulator's clock under CJ/T 188: an identifier outside the standard's.
pub const CJT188_CLOCK_DI: u16 = 0xFF01;
/// CJ/T 188's unit code of m3.
const CJT188_M3: u8 = 0x2C;
/// A CJ/T 188 meter's time is the plant's local time; the simulated plants are in China.
const BEIJING_OFFSET_S: i32 = 8 * 3600;

/// Shares of a DL/T 645 meter's total by tariff 1-4 (尖, 峰, 平, 谷).
const TARIFF_SHARES: [f64; 4] = [0.1, 0.3, 0.4, 0.2];

/// `value` in BCD over `bytes` bytes with `decimals` of them after the point, lowest byte first;
/// a negative value sets the top bit when `signed`. Digits beyond the width are dropped, as a
/// meter's display drops them.
fn bcd(value: f64, bytes: usize, decimals: i32, signed: bool) -> Vec<u8> {
    let mut n = (value.abs() * 10f64.powi(decimals)).round() as u64;
    let mut out = Vec::with_capacity(bytes);
    for _ in 0..bytes {
        let lo = (n % 10) as u8;
        let hi = ((n / 10) % 10) as u8;
        out.push((hi << 4) | lo);
        n /= 100;
    }
    if signed && value < 0.0 {
        *out.last_mut().expect("at least one byte") |= 0x80;
    }
    out
}

/// CJ/T 188's real time, YYYYMMDDhhmmss in BCD, the seconds first, in Beijing time.
fn cjt188_time(clock_ms: i64) -> Vec<u8> {
    use chrono::{Datelike as _, Timelike as _};
    let t = chrono::DateTime::from_timestamp_millis(clock_ms)
        .unwrap_or_default()
        .with_timezone(&chrono::FixedOffset::east_opt(BEIJING_OFFSET_S).expect("a valid offset"));
    let pair = |n: u32| (((n / 10) % 10) << 4 | (n % 10)) as u8;
    let year = t.year() as u32;
    vec![
        pair(t.second()),
        pair(t.minute()),
        pair(t.hour()),
        pair(t.day()),
        pair(t.month()),
        pair(year % 100),
        pair(year / 100),
    ]
}

/// DL/T 645's YYMMDDhhmm in BCD, the minutes first, in Beijing time.
fn dlt645_minute(clock_ms: i64) -> Vec<u8> {
    let mut t = cjt188_time(clock_ms);
    // cjt188_time is ss mm hh DD MM YY CC: drop the seconds and the century.
    t.remove(0);
    t.truncate(5);
    t
}

/// Which register table a block lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Holding,
    Input,
}

/// What a meter shows at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub clock_ms: i64,
    /// The counter as the meter holds it (after replacement offset), before wrapping.
    pub counter: f64,
    /// Present rate, flow unit per hour.
    pub rate_per_h: f64,
}

/// A register image: contiguous mapped blocks per table.
#[derive(Debug, Clone, Default)]
pub struct Image {
    blocks: Vec<(Table, u16, Vec<u16>)>,
}

impl Image {
    fn block(&mut self, table: Table, start: u16, regs: Vec<u16>) {
        self.blocks.push((table, start, regs));
    }

    /// `count` registers from `addr`, all inside one mapped block, or `None` (exception 02).
    pub fn read(&self, table: Table, addr: u16, count: u16) -> Option<Vec<u16>> {
        let end = u32::from(addr) + u32::from(count);
        self.blocks.iter().find_map(|(t, start, regs)| {
            let block_end = u32::from(*start) + regs.len() as u32;
            (*t == table && count > 0 && addr >= *start && end <= block_end).then(|| {
                regs[usize::from(addr - start)..(end - u32::from(*start)) as usize].to_vec()
            })
        })
    }
}

fn words(value: f64, ty: DataType, order: WordOrder) -> Vec<u16> {
    let mut regs = vec![0u16; usize::from(ty.registers())];
    encode(value, ty, order, &mut regs);
    regs
}

fn floats(values: &[f64]) -> Vec<u16> {
    values
        .iter()
        .flat_map(|&v| words(v, DataType::F32, WordOrder::ABCD))
        .collect()
}

impl MeterModel {
    /// Where the counter wraps to zero, in the flow's unit.
    pub fn rollover(self) -> f64 {
        match self {
            MeterModel::EmsSimTotalizer => 18_446_744_073_709_551_616.0 * 0.001,
            // Eight display digits of kWh.
            MeterModel::Dtsu666 | MeterModel::Sdm630 => 100_000_000.0,
            MeterModel::FlowTotalizer => 100_000_000.0,
            MeterModel::BeltScale | MeterModel::WaterMeter => 4_294_967_296.0 * 0.01,
            // XXXXXX.XX kWh, XXXXXX.XX m3.
            MeterModel::Dlt645Meter | MeterModel::Cjt188WaterMeter => 1_000_000.0,
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            MeterModel::Dlt645Meter => Protocol::Dlt645,
            MeterModel::Cjt188WaterMeter => Protocol::Cjt188,
            _ => Protocol::Modbus,
        }
    }

    /// The bytes a CJ/T 188 meter answers after identifier `di` and the serial number, or
    /// `None`: no such data.
    pub fn cjt188_value(self, di: u16, r: Reading) -> Option<Vec<u8>> {
        if self.protocol() != Protocol::Cjt188 {
            return None;
        }
        match di {
            0x901F => {
                let shown = r.counter.rem_euclid(self.rollover());
                let mut v = bcd(shown, 4, 2, false);
                v.push(CJT188_M3);
                // The simulator keeps no settlement day: it shows its current total there too.
                v.extend(bcd(shown, 4, 2, false));
                v.push(CJT188_M3);
                v.extend(cjt188_time(r.clock_ms));
                v.extend([0x00, 0x00]); // status: valve open, battery good
                Some(v)
            }
            CJT188_CLOCK_DI => Some(bcd(r.clock_ms as f64, 8, 0, false)),
            _ => None,
        }
    }

    /// The value bytes a DL/T 645 meter answers for data identifier `di` (written as the
    /// standard prints it), or `None`: no such data.
    pub fn dlt645_value(self, di: u32, r: Reading) -> Option<Vec<u8>> {
        if self.protocol() != Protocol::Dlt645 {
            return None;
        }
        let shown = r.counter.rem_euclid(self.rollover());
        let kw = r.rate_per_h;
        let amps = kw * 1000.0 / 3.0 / 230.0;
        Some(match di {
            0x0001_0000 => bcd(shown, 4, 2, false),
            0x0001_0100..=0x0001_0400 if di & 0xFF == 0 => {
                let tariff = ((di >> 8) & 0xFF) as usize;
                bcd(shown * TARIFF_SHARES[tariff - 1], 4, 2, false)
            }
            0x0002_0000 => bcd(0.0, 4, 2, false),
            0x0201_0100 | 0x0201_0200 | 0x0201_0300 => bcd(230.0, 2, 1, false),
            0x0202_0100 | 0x0202_0200 | 0x0202_0300 => bcd(amps, 3, 3, true),
            0x0203_0000 => bcd(kw, 3, 4, true),
            0x0206_0000 => bcd(0.955, 2, 3, true),
            // Demand: the simulator keeps no demand window, so it shows its present power as
            // the present demand and as the maximum, stamped now.
            0x0280_0004 => bcd(kw, 3, 4, true),
            0x0101_0000 => {
                let mut v = bcd(kw, 3, 4, false);
                v.extend(dlt645_minute(r.clock_ms));
                v
            }
            DLT645_CLOCK_DI => bcd(r.clock_ms as f64, 8, 0, false),
            _ => return None,
        })
    }

    /// The register image for a reading.
    pub fn image(self, r: Reading) -> Image {
        let shown = r.counter.rem_euclid(self.rollover());
        let mut img = Image::default();
        img.block(
            Table::Holding,
            CLOCK_ADDRESS,
            words(r.clock_ms as f64, DataType::U64, WordOrder::ABCD),
        );
        match self {
            MeterModel::EmsSimTotalizer => {
                let mut regs = words(r.clock_ms as f64, DataType::U64, WordOrder::ABCD);
                regs.extend(words(
                    (shown / 0.001).floor(),
                    DataType::U64,
                    WordOrder::ABCD,
                ));
                regs.extend(words(r.rate_per_h, DataType::F32, WordOrder::CDAB));
                img.block(Table::Holding, 0, regs);
            }
            MeterModel::Dtsu666 => {
                // 0x0000: REV., UCode, ClrE, net (3-phase 4-wire = 0), IrAt, UrAt (x10).
                img.block(Table::Holding, 0x0000, vec![204, 701, 0, 0, 1, 10]);
                // 0x2000..0x2046, float32 each: Uab, Ubc, Uca, Ua, Ub, Uc (0.1 V), Ia, Ib, Ic
                // (0.001 A), Pt, Pa, Pb, Pc (0.1 W), Qt, Qa, Qb, Qc (0.1 var), reserved (read as
                // zero), PFt, PFa, PFb, PFc at 0x202A (0.001), reserved, frequency at 0x2044 (0.01 Hz).
                let p_tenths_w = r.rate_per_h * 1000.0 * 10.0; // kWh per hour is kW
                let phase_p = p_tenths_w / 3.0;
                let ia = phase_p / 10.0 / 230.0 * 1000.0;
                let mut v = vec![
                    3_984.0, 3_984.0, 3_984.0, 2_300.0, 2_300.0, 2_300.0, ia, ia, ia,
                ];
                v.extend([p_tenths_w, phase_p, phase_p, phase_p]);
                v.extend([
                    p_tenths_w * 0.3,
                    phase_p * 0.3,
                    phase_p * 0.3,
                    phase_p * 0.3,
                ]);
                v.extend([0.0; 4]); // 0x2022..0x202A
                v.extend([955.0; 4]); // 0x202A..0x2032
                v.extend([0.0; 9]); // 0x2032..0x2044
                v.push(5_000.0); // 0x2044
                img.block(Table::Holding, 0x2000, floats(&v));
                // 0x401E..0x4032: ImpEp, ImpEpA, ImpEpB, ImpEpC, NetImpEp, ExpEp, ExpEpA..C, NetExpEp (kWh).
                let third = shown / 3.0;
                img.block(
                    Table::Holding,
                    0x401E,
                    floats(&[shown, third, third, third, shown, 0.0, 0.0, 0.0, 0.0, 0.0]),
                );
            }
            MeterModel::Sdm630 => {
                let kw = r.rate_per_h;
                let amps = kw * 1000.0 / 3.0 / 230.0;
                // 30001..: L-N volts x3, currents x3, phase powers x3 (W).
                let mut v = vec![230.0, 230.0, 230.0, amps, amps, amps];
                v.extend([kw * 1000.0 / 3.0; 3]);
                img.block(Table::Input, 0x0000, floats(&v));
                // 30053: total system power (W).
                img.block(Table::Input, 0x0034, floats(&[kw * 1000.0]));
                // 30071..30076: frequency, import kWh, export kWh.
                img.block(Table::Input, 0x0046, floats(&[50.0, shown, 0.0]));
            }
            MeterModel::FlowTotalizer => {
                let mut regs = words(r.rate_per_h, DataType::F32, WordOrder::CDAB);
                regs.extend(words(25.0, DataType::F32, WordOrder::CDAB)); // temperature, degC
                regs.extend(words(0.012, DataType::F32, WordOrder::CDAB)); // pressure, MPa
                regs.extend(words((shown / 0.1).floor(), DataType::U32, WordOrder::CDAB));
                img.block(Table::Holding, 0x0000, regs);
            }
            MeterModel::BeltScale => {
                let mut regs = vec![(r.rate_per_h * 10.0).round().clamp(0.0, 65_535.0) as u16, 0];
                regs.extend(words(
                    (shown / 0.01).floor(),
                    DataType::U32,
                    WordOrder::ABCD,
                ));
                img.block(Table::Holding, 0x0000, regs);
            }
            // Not on Modbus: they answer DL/T 645 or CJ/T 188 only (see `dlt645_value` and
            // `cjt188_value`).
            MeterModel::Dlt645Meter | MeterModel::Cjt188WaterMeter => {}
            MeterModel::WaterMeter => {
                img.block(
                    Table::Holding,
                    0x1000,
                    words(r.rate_per_h, DataType::F32, WordOrder::BADC),
                );
                img.block(
                    Table::Holding,
                    0x1010,
                    words((shown / 0.01).floor(), DataType::U32, WordOrder::DCBA),
                );
            }
        }
        img
    }
}

/// A meter as configured in a scenario, bound to one flow of one unit.
#[derive(Debug, Clone)]
pub struct Meter {
    pub device: String,
    pub unit_id: u8,
    pub model: MeterModel,
    pub unit_index: usize,
    pub flow_index: usize,
    /// Reading when the run starts, in the flow's unit (a meter is rarely new).
    pub initial: f64,
    /// Set by a replacement: (flow total at the swap, reading of the new meter then).
    pub replaced: Option<(f64, f64)>,
}

impl Meter {
    /// The counter the meter holds when the flow's total since the start is `total`.
    pub fn counter(&self, total: f64) -> f64 {
        match self.replaced {
            Some((at, new_initial)) => new_initial + (total - at),
            None => self.initial + total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ems_core::decode;

    fn reading(counter: f64) -> Reading {
        Reading {
            clock_ms: 1_767_196_800_123,
            counter,
            rate_per_h: 98.5,
        }
    }

    fn read_f(img: &Image, table: Table, addr: u16, ty: DataType, order: WordOrder) -> f64 {
        let regs = img.read(table, addr, ty.registers()).expect("mapped");
        decode(&regs, ty, order).unwrap()
    }

    #[test]
    fn every_model_shows_its_counter_and_the_clock() {
        let cases: [(MeterModel, Table, u16, DataType, WordOrder, f64); 6] = [
            (
                MeterModel::EmsSimTotalizer,
                Table::Holding,
                4,
                DataType::U64,
                WordOrder::ABCD,
                0.001,
            ),
            (
                MeterModel::Dtsu666,
                Table::Holding,
                0x401E,
                DataType::F32,
                WordOrder::ABCD,
                1.0,
            ),
            (
                MeterModel::Sdm630,
                Table::Input,
                0x0048,
                DataType::F32,
                WordOrder::ABCD,
                1.0,
            ),
            (
                MeterModel::FlowTotalizer,
                Table::Holding,
                0x0006,
                DataType::U32,
                WordOrder::CDAB,
                0.1,
            ),
            (
                MeterModel::BeltScale,
                Table::Holding,
                0x0002,
                DataType::U32,
                WordOrder::ABCD,
                0.01,
            ),
            (
                MeterModel::WaterMeter,
                Table::Holding,
                0x1010,
                DataType::U32,
                WordOrder::DCBA,
                0.01,
            ),
        ];
        for (model, table, addr, ty, order, scale) in cases {
            let img = model.image(reading(12_345.5));
            let shown = read_f(&img, table, addr, ty, order) * scale;
            assert!((shown - 12_345.5).abs() < 0.11, "{model:?}: {shown}");
            let clock = read_f(
                &img,
                Table::Holding,
                CLOCK_ADDRESS,
                DataType::U64,
                WordOrder::ABCD,
            );
            assert_eq!(clock, 1_767_196_800_123.0, "{model:?}");
        }
    }

    #[test]
    fn counters_wrap_where_the_real_meter_does() {
        let belt = MeterModel::BeltScale.image(reading(42_949_672.96 + 5.0));
        let t = read_f(&belt, Table::Holding, 2, DataType::U32, WordOrder::ABCD) * 0.01;
        assert!((t - 5.0).abs() < 0.011, "register width: {t}");
        let flow = MeterModel::FlowTotalizer.image(reading(100_000_007.0));
        let f = read_f(&flow, Table::Holding, 6, DataType::U32, WordOrder::CDAB) * 0.1;
        assert!((f - 7.0).abs() < 0.11, "display maximum: {f}");
    }

    #[test]
    fn unmapped_registers_are_refused_and_tables_are_distinct() {
        let img = MeterModel::Dtsu666.image(reading(1.0));
        assert!(img.read(Table::Holding, 0x401E, 20).is_some());
        assert!(
            img.read(Table::Holding, 0x401E, 21).is_none(),
            "runs past the block"
        );
        assert!(
            img.read(Table::Holding, 0x2000, 0x46).is_some(),
            "instantaneous block"
        );
        assert!(img.read(Table::Holding, 0x3000, 2).is_none());
        assert!(
            img.read(Table::Input, 0x401E, 2).is_none(),
            "no input registers on this model"
        );
        let sdm = MeterModel::Sdm630.image(reading(1.0));
        assert!(sdm.read(Table::Input, 0x0048, 4).is_some());
        assert!(sdm.read(Table::Holding, 0x0048, 2).is_none());
    }

    #[test]
    fn a_dlt645_meter_answers_in_bcd_lowest_byte_first() {
        let m = MeterModel::Dlt645Meter;
        // 12 345.50 kWh as XXXXXX.XX: 50 45 23 01.
        assert_eq!(
            m.dlt645_value(0x0001_0000, reading(12_345.5)),
            Some(vec![0x50, 0x45, 0x23, 0x01])
        );
        // Over a million kWh it wraps, as its six integer digits do.
        assert_eq!(
            m.dlt645_value(0x0001_0000, reading(1_000_007.25)),
            Some(vec![0x25, 0x07, 0x00, 0x00])
        );
        // 98.5 kW as XX.XXXX: 00 50 98.
        assert_eq!(
            m.dlt645_value(0x0203_0000, reading(1.0)),
            Some(vec![0x00, 0x50, 0x98])
        );
        assert_eq!(
            m.dlt645_value(0x0099_0000, reading(1.0)),
            None,
            "no such data"
        );
        assert_eq!(
            MeterModel::Dtsu666.dlt645_value(0x0001_0000, reading(1.0)),
            None
        );
        assert_eq!(bcd(-1.2345, 3, 4, true), vec![0x45, 0x23, 0x81]);
        // Present demand 98.5 kW; the maximum with its minute, 2026-01-01 00:00 Beijing time
        // (YYMMDDhhmm, the minutes first).
        assert_eq!(
            m.dlt645_value(0x0280_0004, reading(1.0)),
            Some(vec![0x00, 0x50, 0x98])
        );
        assert_eq!(
            m.dlt645_value(0x0101_0000, reading(1.0)),
            Some(vec![0x00, 0x50, 0x98, 0x00, 0x00, 0x01, 0x01, 0x26])
        );
    }

    #[test]
    fn a_cjt188_water_meter_answers_its_totals_time_and_status() {
        let m = MeterModel::Cjt188WaterMeter;
        // 1 767 196 800 123 ms is 2026-01-01 00:00:00.123 Beijing time.
        let v = m.cjt188_value(0x901F, reading(1_012_345.5)).unwrap();
        assert_eq!(
            v,
            [
                0x50, 0x45, 0x23, 0x01, 0x2C, 0x50, 0x45, 0x23, 0x01, 0x2C, 0x00, 0x00, 0x00, 0x01,
                0x01, 0x26, 0x20, 0x00, 0x00
            ],
            "12 345.50 m3 after the wrap at a million, twice, then the time and status"
        );
        assert_eq!(
            m.cjt188_value(CJT188_CLOCK_DI, reading(1.0)),
            Some(bcd(1_767_196_800_123.0, 8, 0, false))
        );
        assert_eq!(m.cjt188_value(0x907F, reading(1.0)), None);
        assert_eq!(
            MeterModel::WaterMeter.cjt188_value(0x901F, reading(1.0)),
            None
        );
    }

    #[test]
    fn a_replaced_meter_restarts_near_zero() {
        let mut m = Meter {
            device: "d".into(),
            unit_id: 1,
            model: MeterModel::Sdm630,
            unit_index: 0,
            flow_index: 0,
            initial: 50_000.0,
            replaced: None,
        };
        assert_eq!(m.counter(100.0), 50_100.0);
        m.replaced = Some((100.0, 3.0));
        assert_eq!(m.counter(160.0), 63.0);
    }
}
