//! Counter readings into the 15-minute slots, decided by ems-energy's `CounterTrack::push`:
//! in order onto the counter's state, late by a replay from the checkpoint before the reading.

use super::{write_checkpoints, CounterTracks, FastMap, Gathered, WriteTx};
use crate::clock::rfc3339;
use crate::storage::BatchOutcome;
use ems_energy::counter::{
    add_event, replay, slot_of, CounterEvent, CounterRule, CounterTrack, GapFill, PointSlot,
};

/// One good reading of a counter point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub ts_ms: i64,
    pub seq: i64,
    pub value: f64,
}

/// Adds one good counter reading to the point-slot rollups. Returns whether it arrived late.
///
/// Every reading is decided by [`CounterTrack::push`]. In order (after the last reading the
/// counter took), it is pushed onto the counter's state: the interval from the last accepted
/// reading is added, a spike is rejected, a restarted meter is bridged and marked estimated, a
/// frozen counter is flagged. A late reading makes the counter replay from the checkpoint
/// before it, over the stored readings with it and without it, and the difference goes in (see
/// [`recount`]): the rollups stay what a replay of all readings in time order gives.
pub(super) fn account_sample<'a>(
    tx: &impl WriteTx,
    (last, gathered): (&mut CounterTracks, &mut Gathered<'a>),
    key: (&'a str, &'a str),
    reading: Reading,
    rule: &CounterRule,
    max_gap_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<bool> {
    let mut track = track_of(tx, last, key)?;
    let late = track.anchor.is_some()
        && (reading.ts_ms < track.through_ms
            || (reading.ts_ms == track.through_ms && !last_at_its_time(tx, key.0, reading)?));
    if late {
        track = recount(tx, gathered, key, reading, rule, max_gap_ms, out)?;
    } else {
        for event in track.push(reading.ts_ms, reading.value, rule) {
            add_event(&event, max_gap_ms, |slot, r| {
                gathered.add_slot(key, slot, r)
            });
            record_anomaly(tx, key, reading.ts_ms, reading.value, &event, rule, out)?;
        }
        gathered.checkpoint(key, slot_of(reading.ts_ms), track);
    }
    // Owned keys are built only for a device or point seen for the first time.
    if !last.contains_key(key.0) {
        last.insert(key.0.to_owned(), FastMap::default());
    }
    let tracks = last.get_mut(key.0).expect("inserted");
    match tracks.get_mut(key.1) {
        Some(t) => *t = track,
        None => {
            tracks.insert(key.1.to_owned(), track);
        }
    }
    Ok(late)
}

/// A counter point's state: cached, else its newest checkpoint, else none yet.
pub(super) fn track_of(
    tx: &impl WriteTx,
    last: &CounterTracks,
    (device, point): (&str, &str),
) -> anyhow::Result<CounterTrack> {
    if let Some(t) = last.get(device).and_then(|d| d.get(point)) {
        return Ok(*t);
    }
    Ok(tx.latest_checkpoint(device, point)?.unwrap_or_default())
}

/// Whether `reading` (stored already) has the highest sequence number of its device's readings
/// at its poll time: then it comes last in time order, and a meter whose clock stands still does
/// not make every poll a replay.
fn last_at_its_time(tx: &impl WriteTx, device: &str, reading: Reading) -> anyhow::Result<bool> {
    Ok(tx.highest_seq_at(device, reading.ts_ms)? == Some(reading.seq))
}

/// Stores what a finding other than an interval says of the counter (an anomaly).
fn record_anomaly(
    tx: &impl WriteTx,
    (device, point): (&str, &str),
    ts_ms: i64,
    value: f64,
    event: &CounterEvent,
    rule: &CounterRule,
    out: &mut BatchOutcome,
) -> anyhow::Result<()> {
    let Some((kind, detail)) = anomaly_text(event, value, rule) else {
        return Ok(());
    };
    tx.insert_anomaly(device, point, ts_ms, kind, &detail)?;
    out.anomalies.push(kind);
    Ok(())
}

fn anomaly_text(
    event: &CounterEvent,
    value: f64,
    rule: &CounterRule,
) -> Option<(&'static str, String)> {
    Some(match *event {
        CounterEvent::Interval { .. } => return None,
        CounterEvent::Restart { from, to } => ("restart", format!("counter went back from {from} to {to} (meter replaced or reset); counting resumes there, the interval is {}", fill_note(rule.fill))),
        CounterEvent::Spike { rate_per_h } => ("spike", format!("reading {value} implies {rate_per_h:.1} per hour, above the flow's maximum; rejected")),
        CounterEvent::Jump { from, to } => ("jump", format!("counter moved from {from} to {to} and stayed; counting resumes there, the interval is {}", fill_note(rule.fill))),
        CounterEvent::Frozen { since_ms } => ("frozen", format!("unchanged since {}", rfc3339(since_ms))),
    })
}

fn fill_note(fill: GapFill) -> &'static str {
    match fill {
        GapFill::Rate => "filled at the recent rate and marked estimated",
        GapFill::None => "not filled (a restart's count since zero is kept, marked estimated)",
    }
}

/// A late reading (already stored with its message): the counter is replayed from its last
/// checkpoint before the reading, over the stored readings after that checkpoint with and
/// without this one. The slots get the difference, the anomalies the findings that differ (new
/// ones recorded, ones no longer found withdrawn), the checkpoints the new states. The work is
/// bounded by `[ingest] max_late_s`: nothing later than that behind the device's newest
/// message is stored. Returns the counter's state after its newest reading.
fn recount<'a>(
    tx: &impl WriteTx,
    gathered: &mut Gathered<'a>,
    key: (&'a str, &'a str),
    late: Reading,
    rule: &CounterRule,
    max_gap_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<CounterTrack> {
    // The checkpoints of this batch go first, so that the table holds every state.
    if let Some(list) = gathered.checkpoints.remove(&key) {
        write_checkpoints(tx, key, &list)?;
    }
    let start = tx.checkpoint_before(key.0, key.1, slot_of(late.ts_ms), late.ts_ms)?;
    let from_ms = start.map_or(i64::MIN, |t| t.through_ms);
    let series = tx.series_id(key.0, key.1)?;
    // The stored readings after the checkpoint, in the order the integrity check takes them.
    let readings = tx.good_readings(key.0, series, from_ms)?;
    let start = start.unwrap_or_default();
    let with = replay(
        start,
        readings.iter().map(|r| (r.ts_ms, r.value)),
        rule,
        max_gap_ms,
    );
    let without = replay(
        start,
        readings
            .iter()
            .filter(|r| r.seq != late.seq)
            .map(|r| (r.ts_ms, r.value)),
        rule,
        max_gap_ms,
    );
    let slots: std::collections::BTreeSet<i64> = with
        .slots
        .keys()
        .chain(without.slots.keys())
        .copied()
        .collect();
    for slot in slots {
        let (a, b) = (
            with.slots.get(&slot).copied().unwrap_or_default(),
            without.slots.get(&slot).copied().unwrap_or_default(),
        );
        let diff = PointSlot {
            delta: a.delta - b.delta,
            covered_ms: a.covered_ms - b.covered_ms,
            estimated: a.estimated - b.estimated,
        };
        if diff != PointSlot::default() {
            gathered.add_slot(key, slot, diff);
        }
    }
    // Findings are matched by time and kind.
    let kinds = |r: &ems_energy::counter::Replay| -> Vec<(i64, &'static str)> {
        let mut v: Vec<_> = r
            .findings
            .iter()
            .filter_map(|(ts, value, e)| anomaly_text(e, *value, rule).map(|(k, _)| (*ts, k)))
            .collect();
        v.sort_unstable();
        v
    };
    let (found_with, found_without) = (kinds(&with), kinds(&without));
    for (ts, value, event) in &with.findings {
        let Some((kind, _)) = anomaly_text(event, *value, rule) else {
            continue;
        };
        let had = found_without.iter().filter(|f| **f == (*ts, kind)).count();
        let has = found_with.iter().filter(|f| **f == (*ts, kind)).count();
        if has > had {
            record_anomaly(tx, key, *ts, *value, event, rule, out)?;
        }
    }
    for f in found_without.iter().filter(|f| !found_with.contains(f)) {
        tx.withdraw_anomaly(key.0, key.1, f.0, f.1, late.ts_ms)?;
    }
    write_checkpoints(tx, key, &with.checkpoints)?;
    Ok(with.end)
}
