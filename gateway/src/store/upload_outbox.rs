//! The provincial upload's tables: the outbox of records as sent, each endpoint's
//! confirmations, and where each kind of record goes on (SQLite's [`UploadStore`]).

use rusqlite::{params, Connection, OptionalExtension};

use super::open_conn;
use crate::storage::UploadStore;

/// The outbox and the endpoints' confirmations, in the gateway's database.
pub struct Outbox {
    conn: Connection,
}

impl Outbox {
    pub fn open(path: &std::path::Path) -> anyhow::Result<Outbox> {
        Ok(Outbox {
            conn: open_conn(path)?,
        })
    }
}

impl UploadStore for Outbox {
    fn next_start(&mut self, kind: &str, default: i64) -> anyhow::Result<i64> {
        self.conn.execute(
            "INSERT OR IGNORE INTO upload_state (kind, next_start_ms) VALUES (?1, ?2)",
            params![kind, default],
        )?;
        Ok(self.conn.query_row(
            "SELECT next_start_ms FROM upload_state WHERE kind = ?1",
            [kind],
            |r| r.get(0),
        )?)
    }

    fn push(
        &mut self,
        kind: &str,
        (start, end): (i64, i64),
        record: &serde_json::Value,
        record_id: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO upload_outbox (kind, period_start_ms, record_id, body, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind, start, record_id, record.to_string(), now_ms],
        )?;
        tx.execute(
            "UPDATE upload_state SET next_start_ms = ?2 WHERE kind = ?1",
            params![kind, end],
        )?;
        Ok(tx.commit()?)
    }

    fn next_for(&mut self, endpoint: &str) -> anyhow::Result<Option<(i64, String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, record_id, body FROM upload_outbox
                 WHERE id > COALESCE((SELECT MAX(outbox_id) FROM upload_acks WHERE endpoint = ?1), 0)
                 ORDER BY id LIMIT 1",
                [endpoint],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    fn confirm(&mut self, endpoint: &str, outbox_id: i64, now_ms: i64) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO upload_acks (endpoint, outbox_id, acked_ms) VALUES (?1, ?2, ?3)",
            params![endpoint, outbox_id, now_ms],
        )?;
        Ok(())
    }

    fn status(&mut self, endpoint: &str) -> anyhow::Result<(i64, i64, Option<String>)> {
        let records: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM upload_outbox", [], |r| r.get(0))?;
        let confirmed: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM upload_acks WHERE endpoint = ?1",
            [endpoint],
            |r| r.get(0),
        )?;
        let last = self
            .conn
            .query_row(
                "SELECT o.record_id FROM upload_acks a JOIN upload_outbox o ON o.id = a.outbox_id
                 WHERE a.endpoint = ?1 ORDER BY a.outbox_id DESC LIMIT 1",
                [endpoint],
                |r| r.get(0),
            )
            .optional()?;
        Ok((records, confirmed, last))
    }
}
