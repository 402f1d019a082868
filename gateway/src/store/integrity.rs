//! What an auditor asks for, of SQLite: every rollup recomputed from the raw samples (rows and
//! compacted blocks alike), and the raw samples exported as they were stored.

use std::collections::HashMap;
use std::path::Path;

use ems_energy::counter::PointSlot;
use rusqlite::{params, Connection, OptionalExtension};

use super::open_conn;
use crate::evidence::{named_points, EdgeKeys, EvidenceCheck, EvidenceReport, StoredEvidence};
use crate::storage::AccountingRules;
use crate::view::{export_message, Integrity, Recount, EXPORT_HEADER};

pub(super) fn verify_rollups(c: &Connection, rules: &AccountingRules) -> anyhow::Result<Integrity> {
    let mut series_id = c.prepare("SELECT id FROM series WHERE device = ?1 AND point = ?2")?;
    let mut recount = Recount::default();
    // Each device's messages are read once, in poll order, for all its tracked points.
    for (device, points) in &rules.tracked {
        let mut tracks = HashMap::new();
        for (point, rule) in points {
            if let Some(id) = series_id
                .query_row(params![device, point], |r| r.get::<_, i64>(0))
                .optional()?
            {
                tracks.insert(id, (point.clone(), rule));
            }
        }
        recount.device(device, tracks, rules.max_gap_ms, |each| {
            super::compact::each_message(c, device, (i64::MIN, i64::MAX), |m| match &m.points {
                Some(blob) => each(m.ts_ms, blob),
                None => Ok(()),
            })
        })?;
    }
    let mut stored = HashMap::new();
    let mut stmt =
        c.prepare("SELECT device, point, slot_ms, delta, covered_ms, estimated FROM point_slots")?;
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
    // Where retention deleted older samples, the first kept one starts the recomputation.
    let pruned = c.query_row("SELECT COUNT(*) FROM retention", [], |r| r.get::<_, i64>(0))? > 0;
    Ok(recount.compare(stored, pruned))
}

/// Every signed message of every device, rows and compacted blocks alike, checked against its
/// evidence (see [`crate::evidence`]).
pub(super) fn verify_evidence(c: &Connection, keys: &EdgeKeys) -> anyhow::Result<EvidenceReport> {
    let names: HashMap<i64, String> = c
        .prepare("SELECT id, point FROM series")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let pruned = c.query_row("SELECT COUNT(*) FROM retention", [], |r| r.get::<_, i64>(0))? > 0;
    let devices: Vec<String> = c
        .prepare("SELECT DISTINCT device FROM evidence ORDER BY device")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut evidence = c.prepare(
        "SELECT seq, site, edge, prev, digest, sig FROM evidence WHERE device = ?1 AND seq = ?2",
    )?;
    let mut read = |device: &str, seq: i64| -> anyhow::Result<Option<StoredEvidence>> {
        Ok(evidence
            .query_row(params![device, seq], |r| {
                Ok(StoredEvidence {
                    seq: r.get(0)?,
                    site: r.get(1)?,
                    edge: r.get(2)?,
                    prev: r.get(3)?,
                    digest: r.get(4)?,
                    sig: r.get(5)?,
                })
            })
            .optional()?)
    };
    let mut check = EvidenceCheck::new(keys);
    for device in &devices {
        let mut seen = std::collections::HashSet::new();
        super::compact::each_message(c, device, (i64::MIN, i64::MAX), |m| {
            let Some(e) = read(device, m.seq)? else {
                return Ok(());
            };
            seen.insert(m.seq);
            let before = read(device, m.seq - 1)?.map(|b| b.digest);
            let content = match &m.points {
                Some(blob) => Some(named_points(&names, m.ts_ms, blob)?),
                None => None,
            };
            check.message(
                device,
                &e,
                before,
                content.as_ref(),
                content.is_none() && pruned,
            );
            Ok(())
        })?;
        // Evidence whose message is not stored at all.
        let seqs: Vec<i64> = c
            .prepare_cached("SELECT seq FROM evidence WHERE device = ?1 ORDER BY seq")?
            .query_map([device], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for seq in seqs.into_iter().filter(|s| !seen.contains(s)) {
            if let Some(e) = read(device, seq)? {
                let before = read(device, seq - 1)?.map(|b| b.digest);
                check.message(device, &e, before, None, pruned);
            }
        }
    }
    Ok(check.finish())
}

/// The export from a connection of its own (an export paced by its client holds no other read).
pub(super) fn export_csv(
    path: &Path,
    device: Option<&str>,
    from_ms: i64,
    to_ms: i64,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<u64> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(EXPORT_HEADER)?;
    let conn = open_conn(path)?;
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
            if let Some(blob) = &m.points {
                n += export_message(&mut w, &names, device, m.seq, m.ts_ms, blob)?;
            }
            Ok(())
        })?;
    }
    w.flush()?;
    Ok(n)
}
