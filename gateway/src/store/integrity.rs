//! What an auditor asks for: every rollup recomputed from the raw samples, and the raw samples
//! exported as they were stored.

use std::collections::HashMap;

use ems_energy::counter::{add_event, CounterRule, CounterTrack, PointSlot, SLOT_MS};
use rusqlite::{params, OptionalExtension};

use super::read::Integrity;
use super::{open_conn, rfc3339, Reader};
use crate::storage::AccountingRules;

impl Reader {
    /// Recomputes every tracked point's hourly rollups from the raw samples and compares them
    /// with the stored ones: what an auditor asks for.
    pub fn verify_rollups(&self, rules: &AccountingRules) -> anyhow::Result<Integrity> {
        self.with_any(|c| {
            let mut expected: HashMap<(String, String, i64), PointSlot> = HashMap::new();
            let mut series_id =
                c.prepare("SELECT id FROM series WHERE device = ?1 AND point = ?2")?;
            let mut samples_checked = 0u64;
            // Where retention deleted older samples, the first kept one starts the recomputation
            // and the slot it falls in cannot be checked.
            let pruned: bool =
                c.query_row("SELECT COUNT(*) FROM retention", [], |r| r.get::<_, i64>(0))? > 0;
            let mut unchecked_before: HashMap<(String, String), i64> = HashMap::new();
            // Each device's messages are read once, in poll order, for all its tracked points.
            for (device, points) in &rules.tracked {
                let mut tracks: HashMap<i64, (&String, &CounterRule, CounterTrack)> =
                    HashMap::new();
                for (point, rule) in points {
                    if let Some(id) = series_id
                        .query_row(params![device, point], |r| r.get::<_, i64>(0))
                        .optional()?
                    {
                        tracks.insert(id, (point, rule, CounterTrack::default()));
                    }
                }
                // Rows and compacted blocks alike, in poll order.
                super::compact::each_message(c, device, (i64::MIN, i64::MAX), |m| {
                    let (ts, Some(blob)) = (m.ts_ms, &m.points) else {
                        return Ok(());
                    };
                    for p in crate::packed::unpack(blob)? {
                        let (Some((point, rule, track)), Some(v), true) =
                            (tracks.get_mut(&p.series), p.value, p.quality.is_good())
                        else {
                            continue;
                        };
                        unchecked_before
                            .entry((device.clone(), (*point).clone()))
                            .or_insert(ts - ts.rem_euclid(SLOT_MS) + SLOT_MS);
                        samples_checked += 1;
                        for event in track.push(ts, v, rule) {
                            add_event(&event, rules.max_gap_ms, |slot, r| {
                                let e = expected
                                    .entry((device.clone(), (*point).clone(), slot))
                                    .or_default();
                                e.delta += r.delta;
                                e.covered_ms += r.covered_ms;
                                e.estimated += r.estimated;
                            });
                        }
                    }
                    Ok(())
                })?;
            }
            let mut stored: HashMap<(String, String, i64), PointSlot> = HashMap::new();
            let mut stmt = c.prepare(
                "SELECT device, point, slot_ms, delta, covered_ms, estimated FROM point_slots",
            )?;
            for row in stmt.query_map([], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?),
                    PointSlot {
                        delta: r.get(3)?,
                        covered_ms: r.get(4)?,
                        estimated: r.get(5)?,
                    },
                ))
            })? {
                let (k, v) = row?;
                stored.insert(k, v);
            }
            let mut mismatches = Vec::new();
            let keys: std::collections::BTreeSet<_> =
                expected.keys().chain(stored.keys()).cloned().collect();
            for k in &keys {
                if pruned
                    && unchecked_before
                        .get(&(k.0.clone(), k.1.clone()))
                        .is_none_or(|&t| k.2 < t)
                {
                    continue;
                }
                let (e, s) = (
                    expected.get(k).copied().unwrap_or_default(),
                    stored.get(k).copied().unwrap_or_default(),
                );
                let tol = 1e-6 * e.delta.abs().max(1.0);
                if (e.delta - s.delta).abs() > tol
                    || e.covered_ms != s.covered_ms
                    || (e.estimated - s.estimated).abs() > tol
                {
                    mismatches.push(format!(
                        "{}/{} at {}: stored delta {} covered {} ms, raw samples give {} and {} ms",
                        k.0,
                        k.1,
                        rfc3339(k.2),
                        s.delta,
                        s.covered_ms,
                        e.delta,
                        e.covered_ms
                    ));
                }
            }
            Ok(Integrity {
                samples_checked,
                slots_checked: keys.len() as u64,
                mismatches,
            })
        })
    }

    /// Writes the raw samples with `from_ms <= ts < to_ms` (of one device, or all) as CSV:
    /// device, seq, point, time (RFC 3339 UTC), value, quality. Returns the rows written.
    pub fn export_csv(
        &self,
        device: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        out: impl std::io::Write,
    ) -> anyhow::Result<u64> {
        let mut w = csv::Writer::from_writer(out);
        w.write_record(["device", "seq", "point", "time", "value", "quality"])?;
        let conn = open_conn(&self.path)?;
        let names: HashMap<i64, String> = conn
            .prepare("SELECT id, point FROM series")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // The device, or every device with a stored message (a row or a block) in name order;
        // rows and compacted blocks alike, in poll order.
        let devices: Vec<String> = match device {
            Some(d) => vec![d.to_owned()],
            None => conn
                .prepare(
                    "SELECT DISTINCT device FROM messages UNION SELECT device FROM message_blocks
                     ORDER BY device",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
        };
        let mut n = 0;
        for device in &devices {
            super::compact::each_message(&conn, device, (from_ms, to_ms), |m| {
                let Some(blob) = &m.points else {
                    return Ok(());
                };
                let mut points = crate::packed::unpack(blob)?;
                let name = |p: &crate::packed::PackedPoint| {
                    names.get(&p.series).map_or("", String::as_str)
                };
                points.sort_by(|a, b| name(a).cmp(name(b)));
                for p in &points {
                    w.write_record([
                        device.clone(),
                        m.seq.to_string(),
                        name(p).to_owned(),
                        rfc3339(m.ts_ms),
                        p.value.map(|v| v.to_string()).unwrap_or_default(),
                        p.quality.to_string(),
                    ])?;
                    n += 1;
                }
                Ok(())
            })?;
        }
        w.flush()?;
        Ok(n)
    }
}
