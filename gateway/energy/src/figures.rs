//! The one read path from stored slots to figures: a unit's figures for any periods, and a meter
//! point's completeness. The screen, the reports, the alarms, the sink and the upload all read
//! through here, so a figure is the same wherever it shows.

use crate::counter::PointSlot;
use crate::indicators::{indicators_measured, Indicator};
use crate::model::{Plant, Unit};

/// What stores the 15-minute slots (the gateway's database).
pub trait SlotSource {
    type Error;
    /// The slots of one meter point with `from_ms <= slot < to_ms`, in time order.
    fn point_slots(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, PointSlot)>, Self::Error>;
}

/// A unit's figures for each of `periods` (in order), from its flows' slots.
pub fn unit_figures<S: SlotSource>(
    plant: &Plant,
    source: &S,
    unit: &Unit,
    periods: &[(i64, i64)],
) -> Result<Vec<Indicator>, S::Error> {
    let (Some(first), Some(last)) = (periods.first(), periods.last()) else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::with_capacity(unit.flows.len());
    let mut lhv = Vec::with_capacity(unit.flows.len());
    for f in &unit.flows {
        rows.push(source.point_slots(&f.device, &f.point, first.0, last.1)?);
        lhv.push(calorimeter_slots(source, f, *first, *last)?);
    }
    Ok(indicators_measured(
        unit,
        periods,
        plant.utc_offset(),
        |i| rows[i].clone(),
        |i| lhv[i].clone(),
    ))
}

/// The slots of the calorimeter a flow takes its heating value from (none without one), over
/// the periods from `first` to `last`.
pub fn calorimeter_slots<S: SlotSource>(
    source: &S,
    flow: &crate::model::Flow,
    first: (i64, i64),
    last: (i64, i64),
) -> Result<Vec<(i64, PointSlot)>, S::Error> {
    match &flow.lhv_point {
        Some(p) => source.point_slots(&p.device, &p.point, first.0, last.1),
        None => Ok(Vec::new()),
    }
}

/// A meter point's completeness over a period: the share of its elapsed part (from the later of
/// its start and `from_ms`, the earliest anything can be stored, to the earlier of its end and
/// `now_ms`) that good readings covered, at most 1; `None` for a period not yet begun.
pub fn point_completeness(
    slots: &[(i64, PointSlot)],
    (start, end): (i64, i64),
    from_ms: i64,
    now_ms: i64,
) -> Option<f64> {
    let span = end.min(now_ms) - start.max(from_ms);
    if span <= 0 {
        return None;
    }
    let covered: i64 = slots
        .iter()
        .filter(|(t, _)| (start..end).contains(t))
        .map(|(_, r)| r.covered_ms)
        .sum();
    Some((covered as f64 / span as f64).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completeness_counts_the_elapsed_part_after_the_earliest_time() {
        let slot = |t, covered_ms| {
            (
                t,
                PointSlot {
                    delta: 1.0,
                    covered_ms,
                    estimated: 0.0,
                },
            )
        };
        let day = 86_400_000;
        let slots = [slot(0, 900_000), slot(900_000, 450_000)];
        // Of a whole past day: 1 350 000 of 86 400 000 ms.
        assert_eq!(
            point_completeness(&slots, (0, day), 0, 10 * day),
            Some(1_350_000.0 / day as f64)
        );
        // Of today at 00:30, half an hour elapsed: 75 %.
        assert_eq!(
            point_completeness(&slots, (0, day), 0, 1_800_000),
            Some(0.75)
        );
        // Nothing can be stored before `from_ms`: the time before it is not counted missing.
        assert_eq!(point_completeness(&slots, (0, day), 0, 900_000), Some(1.0));
        assert_eq!(point_completeness(&slots, (0, day), day, 2 * day), None);
        assert_eq!(
            point_completeness(&slots, (day, 2 * day), 0, day),
            None,
            "not begun"
        );
    }
}
