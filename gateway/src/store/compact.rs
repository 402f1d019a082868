//! Settled raw history in blocks (history.rs): the compaction of a device's settled days, the
//! one way every reader takes a device's messages in both forms, and the reopening of a
//! compacted day that a late or repeated message touches.
//!
//! A message lives either as a row of `messages` or in its device's block of its UTC day, never
//! both: the compaction replaces a day's rows by its block in one transaction, after checking
//! that the block decodes to exactly those rows; a message whose day or sequence number a block
//! holds turns the block back into rows, in the storing transaction, before it is taken.

use std::collections::VecDeque;
use std::path::Path;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::open_conn;
use crate::history::{day_of, StoredMessage};
use crate::view::SeqSpan;

const DAY_MS: i64 = 86_400_000;

/// Calls `each` with every message of `device` polled in `[from_ms, to_ms)`, rows and blocks
/// alike, in poll-time order (then sequence order).
pub(super) fn each_message(
    conn: &Connection,
    device: &str,
    (from_ms, to_ms): (i64, i64),
    mut each: impl FnMut(StoredMessage) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let days: Vec<i64> = conn
        .prepare_cached(
            "SELECT day_ms FROM message_blocks WHERE device = ?1 AND day_ms < ?3 AND day_ms > ?2
             ORDER BY day_ms",
        )?
        .query_map(
            params![device, from_ms.saturating_sub(DAY_MS), to_ms],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut days = days.into_iter();
    let mut block_stmt =
        conn.prepare_cached("SELECT data FROM message_blocks WHERE device = ?1 AND day_ms = ?2")?;
    let mut pending: VecDeque<StoredMessage> = VecDeque::new();
    // The next block's messages in range, when those taken so far are used up.
    let mut refill = |pending: &mut VecDeque<StoredMessage>| -> anyhow::Result<bool> {
        while pending.is_empty() {
            let Some(day) = days.next() else {
                return Ok(false);
            };
            let data: Vec<u8> = block_stmt.query_row(params![device, day], |r| r.get(0))?;
            pending.extend(
                crate::history::decode(&data)?
                    .into_iter()
                    .filter(|m| (from_ms..to_ms).contains(&m.ts_ms)),
            );
        }
        Ok(true)
    };
    let mut rows = conn.prepare_cached(
        "SELECT seq, ts_ms, edge, received_ms, points FROM messages
         WHERE device = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 ORDER BY ts_ms, seq",
    )?;
    let mut rows = rows.query(params![device, from_ms, to_ms])?;
    while let Some(r) = rows.next()? {
        let row = StoredMessage {
            seq: r.get(0)?,
            ts_ms: r.get(1)?,
            edge: r.get(2)?,
            received_ms: r.get(3)?,
            points: r.get(4)?,
        };
        while refill(&mut pending)? {
            let head = &pending[0];
            if (head.ts_ms, head.seq) > (row.ts_ms, row.seq) {
                break;
            }
            each(pending.pop_front().expect("refilled"))?;
        }
        each(row)?;
    }
    while refill(&mut pending)? {
        while let Some(m) = pending.pop_front() {
            each(m)?;
        }
    }
    Ok(())
}

/// The messages of `device` polled in `[from_ms, to_ms)`: rows counted by SQL, a block wholly
/// inside the period from its own columns, a block crossing an end of it decoded.
pub(super) fn seq_span(
    conn: &Connection,
    device: &str,
    (from_ms, to_ms): (i64, i64),
) -> anyhow::Result<Option<SeqSpan>> {
    let mut span = None;
    let (first, last, messages): (Option<i64>, Option<i64>, i64) = conn
        .prepare_cached(
            "SELECT MIN(seq), MAX(seq), COUNT(*) FROM messages
             WHERE device = ?1 AND ts_ms >= ?2 AND ts_ms < ?3",
        )?
        .query_row(params![device, from_ms, to_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if let (Some(first_seq), Some(last_seq)) = (first, last) {
        span = Some(SeqSpan {
            first_seq,
            last_seq,
            messages,
        });
    }
    let mut blocks = conn.prepare_cached(
        "SELECT first_seq, last_seq, first_ts_ms, last_ts_ms, messages, data FROM message_blocks
         WHERE device = ?1 AND last_ts_ms >= ?2 AND first_ts_ms < ?3",
    )?;
    let mut rows = blocks.query(params![device, from_ms, to_ms])?;
    while let Some(r) = rows.next()? {
        let (first_ts, last_ts): (i64, i64) = (r.get(2)?, r.get(3)?);
        if first_ts >= from_ms && last_ts < to_ms {
            let whole = SeqSpan {
                first_seq: r.get(0)?,
                last_seq: r.get(1)?,
                messages: r.get(4)?,
            };
            span = Some(SeqSpan::join(span, whole));
            continue;
        }
        let data: Vec<u8> = r.get(5)?;
        for m in crate::history::decode(&data)? {
            if (from_ms..to_ms).contains(&m.ts_ms) {
                let one = SeqSpan {
                    first_seq: m.seq,
                    last_seq: m.seq,
                    messages: 1,
                };
                span = Some(SeqSpan::join(span, one));
            }
        }
    }
    Ok(span)
}

/// Turns back into rows every block of `device` that holds sequence number `seq` or the day
/// of `ts_ms`, so that a message of that day or number is taken as if nothing were compacted.
/// Returns the messages put back.
pub(super) fn reopen(
    conn: &Connection,
    device: &str,
    seq: i64,
    ts_ms: i64,
) -> anyhow::Result<usize> {
    let blocks: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT day_ms, data FROM message_blocks
             WHERE device = ?1 AND (day_ms = ?2 OR (first_seq <= ?3 AND last_seq >= ?3))",
        )?
        .query_map(params![device, day_of(ts_ms), seq], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut reopened = 0;
    for (day, data) in blocks {
        for m in crate::history::decode(&data)? {
            conn.prepare_cached(
                "INSERT INTO messages (device, seq, ts_ms, edge, received_ms, points)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                device,
                m.seq,
                m.ts_ms,
                m.edge,
                m.received_ms,
                m.points
            ])?;
            reopened += 1;
        }
        conn.prepare_cached("DELETE FROM message_blocks WHERE device = ?1 AND day_ms = ?2")?
            .execute(params![device, day])?;
    }
    Ok(reopened)
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Compacted {
    /// Device-days turned into blocks.
    pub blocks: u64,
    pub messages: u64,
    pub points: u64,
    /// Bytes of the rows' packed samples, and of the blocks that replaced the rows.
    pub sample_bytes_before: u64,
    pub block_bytes: u64,
}

/// Compacts settled days of raw history, device by device and day by day, a few days a
/// transaction (ingest goes on meanwhile; a crash loses or doubles nothing).
pub struct Compactor {
    conn: Connection,
}

impl Compactor {
    pub fn open(path: &Path) -> anyhow::Result<Compactor> {
        let conn = open_conn(path)?;
        // Each swap is atomic either way (WAL); what synchronous=FULL adds, that a commit
        // survives a power cut, a compaction does not need: a day whose swap is lost is still
        // rows, compacted again the next time. It saves an fsync a transaction.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Compactor { conn })
    }

    /// Compacts each device's UTC days that ended `settle_ms` or more before its newest poll.
    /// Compacts every device's settled days, a few a transaction, until all are done or
    /// `stop()` says to stop (a gateway shutting down: a year of history takes minutes), which
    /// it asks between transactions.
    pub fn compact(
        &mut self,
        settle_ms: i64,
        stop: &dyn Fn() -> bool,
    ) -> anyhow::Result<Compacted> {
        let devices: Vec<(String, i64)> = self
            .conn
            .prepare("SELECT device, last_ts_ms FROM devices ORDER BY device")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut done = Compacted::default();
        for (device, newest) in devices {
            // Days that end by then are settled.
            let settled = day_of(newest.saturating_sub(settle_ms).saturating_add(1));
            let mut finished = false;
            while !finished {
                if stop() {
                    return Ok(done);
                }
                // A few days a transaction (each a few milliseconds): the writer waits for it,
                // immediate, rather than making it fail.
                let tx = self
                    .conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut batch = Compacted::default();
                for _ in 0..DAYS_PER_TRANSACTION {
                    let first: Option<i64> = tx
                        .prepare_cached(
                            "SELECT MIN(ts_ms) FROM messages WHERE device = ?1 AND ts_ms < ?2",
                        )?
                        .query_row(params![device, settled], |r| r.get(0))?;
                    let Some(first) = first else {
                        finished = true;
                        break;
                    };
                    compact_day(&tx, &device, day_of(first), &mut batch)?;
                }
                tx.commit()?;
                done.add(batch);
            }
        }
        Ok(done)
    }
}

/// Device-days swapped in one transaction.
const DAYS_PER_TRANSACTION: usize = 8;

impl Compacted {
    fn add(&mut self, o: Compacted) {
        self.blocks += o.blocks;
        self.messages += o.messages;
        self.points += o.points;
        self.sample_bytes_before += o.sample_bytes_before;
        self.block_bytes += o.block_bytes;
    }
}

/// One device's day: its rows (and a block of the day, should one exist) into one block.
fn compact_day(
    tx: &Connection,
    device: &str,
    day: i64,
    done: &mut Compacted,
) -> anyhow::Result<()> {
    let mut messages = Vec::new();
    let mut sample_bytes = 0u64;
    each_message(tx, device, (day, day + DAY_MS), |m| {
        sample_bytes += m.points.as_ref().map_or(0, |p| p.len() as u64);
        messages.push(m);
        Ok(())
    })?;
    let (data, summary) = crate::history::encode(&messages)?;
    tx.prepare_cached("DELETE FROM message_blocks WHERE device = ?1 AND day_ms = ?2")?
        .execute(params![device, day])?;
    tx.prepare_cached(
        "INSERT INTO message_blocks (device, day_ms, first_seq, last_seq, first_ts_ms,
             last_ts_ms, messages, points, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        device,
        day,
        summary.first_seq,
        summary.last_seq,
        summary.first_ts_ms,
        summary.last_ts_ms,
        summary.messages,
        summary.points,
        data
    ])?;
    let deleted = tx
        .prepare_cached("DELETE FROM messages WHERE device = ?1 AND ts_ms >= ?2 AND ts_ms < ?3")?
        .execute(params![device, day, day + DAY_MS])?;
    anyhow::ensure!(
        deleted as i64 <= summary.messages,
        "more rows than the block of {device} on {} holds",
        super::rfc3339(day)
    );
    done.blocks += 1;
    done.messages += summary.messages as u64;
    done.points += summary.points as u64;
    done.sample_bytes_before += sample_bytes;
    done.block_bytes += data.len() as u64;
    Ok(())
}

/// How raw history is stored: rows, blocks and the bytes a point costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HistoryStats {
    pub database_bytes: u64,
    pub rows: u64,
    pub row_points: u64,
    pub blocks: u64,
    pub block_messages: u64,
    pub block_points: u64,
    pub block_bytes: u64,
    /// The database's pages in use over every stored point (rows and blocks, and with them the
    /// rollups, ledger and everything else): what a year costs.
    pub bytes_per_point: Option<f64>,
    /// The blocks' bytes over their points.
    pub block_bytes_per_point: Option<f64>,
}

/// The storage's figures, from the database at `path`.
pub fn history_stats(path: &Path) -> anyhow::Result<HistoryStats> {
    let conn = open_conn(path)?;
    // Pages in use: a compaction frees pages for reuse (the file keeps its size until a
    // VACUUM), which are not what the history costs.
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let (rows, row_bytes): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(length(points)), 0) FROM messages",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (blocks, block_messages, block_points, block_bytes): (i64, i64, i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(messages), 0), COALESCE(SUM(points), 0),
                    COALESCE(SUM(length(data)), 0) FROM message_blocks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let row_points = crate::packed::count(row_bytes as usize) as u64;
    let points = row_points + block_points as u64;
    let database_bytes = ((pages - free) * page_size) as u64;
    Ok(HistoryStats {
        database_bytes,
        rows: rows as u64,
        row_points,
        blocks: blocks as u64,
        block_messages: block_messages as u64,
        block_points: block_points as u64,
        block_bytes: block_bytes as u64,
        bytes_per_point: (points > 0).then(|| database_bytes as f64 / points as f64),
        block_bytes_per_point: (block_points > 0).then(|| block_bytes as f64 / block_points as f64),
    })
}

/// The messages stored of every device: rows and those in blocks.
pub(super) fn message_count(conn: &Connection) -> anyhow::Result<u64> {
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?;
    let in_blocks: i64 = conn.query_row(
        "SELECT COALESCE(SUM(messages), 0) FROM message_blocks",
        [],
        |r| r.get(0),
    )?;
    Ok((rows + in_blocks) as u64)
}
