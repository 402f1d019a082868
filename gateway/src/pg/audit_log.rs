//! PostgreSQL's operator audit log (see [`crate::audit`]): appended under an advisory lock, so
//! that the entries' ids follow the chain whoever appends.

use std::collections::{BTreeMap, HashMap};

use postgres::GenericClient;

use crate::audit::{changed_files, AuditReport, AuditRow, Declared, Entry, StoredEntry, START};

/// Serializes the log's appenders across the database.
const AUDIT_LOCK: i64 = 7_243_007;

/// Appends `e` within the caller's transaction.
pub(crate) fn append(tx: &mut impl GenericClient, e: &Entry) -> anyhow::Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
    let prev = match tx.query_opt("SELECT digest FROM audit_log ORDER BY id DESC LIMIT 1", &[])? {
        Some(r) => super::bytes32(r.get(0))?,
        None => START,
    };
    tx.execute(
        "INSERT INTO audit_log (at_ms, who, action, subject, detail, prev, digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &e.at_ms,
            &e.who,
            &e.action,
            &e.subject,
            &e.detail,
            &&prev[..],
            &&e.digest(&prev)[..],
        ],
    )?;
    Ok(())
}

fn entries(c: &mut impl GenericClient, sql: &str, limit: i64) -> anyhow::Result<Vec<StoredEntry>> {
    Ok(c.query(sql, &[&limit])?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Entry {
                    at_ms: r.get(1),
                    who: r.get(2),
                    action: r.get(3),
                    subject: r.get(4),
                    detail: r.get(5),
                },
                r.get(6),
                r.get(7),
            )
        })
        .collect())
}

const COLUMNS: &str = "id, at_ms, who, action, subject, detail, prev, digest";

pub(crate) fn list(c: &mut impl GenericClient, limit: i64) -> anyhow::Result<Vec<AuditRow>> {
    Ok(entries(
        c,
        &format!("SELECT {COLUMNS} FROM audit_log ORDER BY id DESC LIMIT $1"),
        limit,
    )?
    .into_iter()
    .map(|(id, e, _, d)| AuditRow::of(id, e, &d))
    .collect())
}

pub(crate) fn verify(c: &mut impl GenericClient) -> anyhow::Result<AuditReport> {
    Ok(crate::audit::check(entries(
        c,
        &format!("SELECT {COLUMNS} FROM audit_log WHERE $1::BIGINT IS NOT NULL ORDER BY id"),
        0,
    )?))
}

/// Logs `entry` in a transaction of its own, after the log's other appenders.
pub(crate) fn log_act(c: &mut postgres::Client, entry: &Entry) -> anyhow::Result<()> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
    append(&mut tx, entry)?;
    tx.commit()?;
    Ok(())
}

pub(crate) fn note_files(
    c: &mut postgres::Client,
    digests: &BTreeMap<String, String>,
    declared: Option<&Declared>,
    now_ms: i64,
) -> anyhow::Result<usize> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
    let logged: HashMap<String, String> = tx
        .query(
            "SELECT subject, detail FROM audit_log WHERE id IN
             (SELECT MAX(id) FROM audit_log WHERE action = 'file_changed' GROUP BY subject)",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let changed = changed_files(digests, &logged, declared, now_ms);
    for entry in &changed {
        append(&mut tx, entry)?;
    }
    tx.commit()?;
    Ok(changed.len())
}
