//! SQLite's operator audit log (see [`crate::audit`]).

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension};

use crate::audit::{changed_files, AuditReport, AuditRow, Declared, Entry, StoredEntry, START};

/// Appends `e` to the log, within the caller's transaction (the act and its entry commit
/// together).
pub(crate) fn append(c: &Connection, e: &Entry) -> anyhow::Result<()> {
    let prev: [u8; 32] = c
        .query_row(
            "SELECT digest FROM audit_log ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(START);
    c.execute(
        "INSERT INTO audit_log (at_ms, who, action, subject, detail, prev, digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            e.at_ms,
            e.who,
            e.action,
            e.subject,
            e.detail,
            prev,
            e.digest(&prev)
        ],
    )?;
    Ok(())
}

fn entries(c: &Connection, sql: &str, limit: i64) -> anyhow::Result<Vec<StoredEntry>> {
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map([limit], |r| {
        Ok((
            r.get(0)?,
            Entry {
                at_ms: r.get(1)?,
                who: r.get(2)?,
                action: r.get(3)?,
                subject: r.get(4)?,
                detail: r.get(5)?,
            },
            r.get(6)?,
            r.get(7)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

const COLUMNS: &str = "id, at_ms, who, action, subject, detail, prev, digest";

/// The newest `limit` entries, newest first.
pub(crate) fn list(c: &Connection, limit: i64) -> anyhow::Result<Vec<AuditRow>> {
    Ok(entries(
        c,
        &format!("SELECT {COLUMNS} FROM audit_log ORDER BY id DESC LIMIT ?1"),
        limit,
    )?
    .into_iter()
    .map(|(id, e, _, d)| AuditRow::of(id, e, &d))
    .collect())
}

/// The whole chain recomputed.
pub(crate) fn verify(c: &Connection) -> anyhow::Result<AuditReport> {
    Ok(crate::audit::check(entries(
        c,
        &format!("SELECT {COLUMNS} FROM audit_log WHERE ?1 = ?1 ORDER BY id"),
        0,
    )?))
}

/// Logs `entry` in a transaction of its own.
pub(crate) fn log_act(c: &mut Connection, entry: &Entry) -> anyhow::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    append(&tx, entry)?;
    tx.commit()?;
    Ok(())
}

/// Logs each file of `digests` that differs from its newest entry; returns how many.
pub(crate) fn note_files(
    c: &mut Connection,
    digests: &BTreeMap<String, String>,
    declared: Option<&Declared>,
    now_ms: i64,
) -> anyhow::Result<usize> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let logged: HashMap<String, String> = tx
        .prepare(
            "SELECT subject, detail FROM audit_log WHERE id IN
             (SELECT MAX(id) FROM audit_log WHERE action = 'file_changed' GROUP BY subject)",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let changed = changed_files(digests, &logged, declared, now_ms);
    for entry in &changed {
        append(&tx, entry)?;
    }
    tx.commit()?;
    Ok(changed.len())
}
