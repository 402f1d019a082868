//! Meters: how a flow's running total appears in Modbus registers.
//!
//! The skeleton's one meter type is a totalizer with a real-time clock, the shape of a flow
//! computer or an energy meter with an RTC. Its map (holding registers, zero-based):
//!
//! | address | length | type | content |
//! |---|---|---|---|
//! | 0 | 4 | u64 ABCD | meter clock, ms since the Unix epoch (UTC) |
//! | 4 | 4 | u64 ABCD | running total in thousandths of the flow's unit |
//! | 8 | 2 | f32 CDAB | present rate, flow unit per hour |
//!
//! The same map is the `ems-sim-totalizer` profile of ems-edge.

use ems_core::decode::encode;
use ems_core::{DataType, WordOrder};

/// Registers the totalizer map has; reads past this are refused with exception 02.
pub const MAP_LEN: u16 = 10;
/// Resolution of the running total: the register holds total / RESOLUTION.
pub const RESOLUTION: f64 = 0.001;

/// A meter as configured in a scenario, bound to one flow of one unit.
#[derive(Debug, Clone)]
pub struct Meter {
    pub device: String,
    pub unit_id: u8,
    pub unit_index: usize,
    pub flow_index: usize,
    /// Reading at the start of the run, in the flow's unit (a meter is rarely new).
    pub initial: f64,
}

impl Meter {
    /// Renders the whole register map for a reading.
    pub fn registers(&self, clock_ms: i64, total: f64, rate_per_h: f64) -> [u16; MAP_LEN as usize] {
        let mut regs = [0u16; MAP_LEN as usize];
        encode(
            clock_ms as f64,
            DataType::U64,
            WordOrder::ABCD,
            &mut regs[0..4],
        );
        let counts = ((self.initial + total) / RESOLUTION).floor();
        encode(counts, DataType::U64, WordOrder::ABCD, &mut regs[4..8]);
        encode(rate_per_h, DataType::F32, WordOrder::CDAB, &mut regs[8..10]);
        regs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ems_core::decode;

    #[test]
    fn map_decodes_back_to_clock_total_and_rate() {
        let m = Meter {
            device: "d".into(),
            unit_id: 1,
            unit_index: 0,
            flow_index: 0,
            initial: 1000.0,
        };
        let regs = m.registers(1_767_196_800_123, 12.3456, 98.5);
        assert_eq!(
            decode(&regs[0..4], DataType::U64, WordOrder::ABCD),
            Ok(1_767_196_800_123.0)
        );
        assert_eq!(
            decode(&regs[4..8], DataType::U64, WordOrder::ABCD),
            Ok(1_012_345.0)
        );
        assert_eq!(
            decode(&regs[8..10], DataType::F32, WordOrder::CDAB),
            Ok(98.5)
        );
    }
}
