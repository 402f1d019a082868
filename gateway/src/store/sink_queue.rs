//! The time-series sink's tables: line protocol of stored messages not yet accepted, and the
//! 15-minute slots whose rollups changed since last sent (filled in the storing transaction;
//! see `Store::enable_sink`): SQLite's [`SinkStore`].

use std::path::Path;

use rusqlite::{params, Connection};

use super::open_conn;
use crate::storage::SinkStore;

pub struct SinkTable {
    conn: Connection,
}

impl SinkTable {
    pub fn open(path: &Path) -> anyhow::Result<SinkTable> {
        Ok(SinkTable {
            conn: open_conn(path)?,
        })
    }
}

impl SinkStore for SinkTable {
    fn depth(&mut self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM sink_queue", [], |r| r.get(0))?)
    }

    fn oldest(&mut self, max: usize) -> anyhow::Result<Vec<(i64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, lines FROM sink_queue ORDER BY id LIMIT ?1")?;
        let rows = stmt.query_map([max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn dirty_slots(&mut self, max: usize) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT slot_ms, version FROM sink_dirty_slots ORDER BY slot_ms LIMIT ?1",
        )?;
        let rows = stmt.query_map([max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove(&mut self, ids: &[i64], slots: &[(i64, i64)]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        // One writer at a time: ids are taken in commit order, so `oldest` gave a prefix.
        if let Some(&last) = ids.iter().max() {
            tx.execute("DELETE FROM sink_queue WHERE id <= ?1", [last])?;
        }
        for (slot, version) in slots {
            tx.execute(
                "DELETE FROM sink_dirty_slots WHERE slot_ms = ?1 AND version = ?2",
                params![slot, version],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}
