//! SQLite storage, split by job: [`schema`] (every table and its migrations: the one place that
//! knows a table's shape), [`write`] (ingest's batches: ledger, raw samples, quarantine, edge
//! status), [`counters`] (counter readings into slots, late ones recounted from checkpoints),
//! [`read`] (what the API, reports, alarms and sinks read, [`crate::view`]'s `ReadRecord`),
//! [`integrity`] (the recomputation and the export), [`compact`] (settled raw history in blocks, read back with the rows), [`upkeep`]
//! (retention, backup).
//!
//! One writer connection commits each ingest batch in one transaction (WAL, synchronous=FULL:
//! a commit survives a power cut, and only committed messages are acknowledged to the broker).
//! Readers use their own connections.

pub mod alarm_book;
mod audit_log;
mod compact;
mod integrity;
mod read;
mod schema;
pub mod sink_queue;
#[cfg(test)]
mod tests;
mod upkeep;
pub mod upload_outbox;
mod write;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rusqlite::Connection;

use schema::migrate;

pub use compact::{history_stats, Compacted, Compactor, HistoryStats};
pub use read::SqliteReader;
pub use upkeep::Pruner;

/// Line protocol (or any text) a time-series sink wants queued for each stored message, written
/// in the storing transaction. The sink owns the encoding; the store only keeps what it gives.
pub use crate::batch::SinkEncoder;

pub struct Store {
    path: PathBuf,
    conn: Connection,
    /// State of each tracked counter point, series id of each device's points.
    caches: crate::batch::Caches,
    /// Queue what is stored for the time-series sink.
    sink: Option<SinkEncoder>,
}

pub(crate) fn open_conn(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let mut conn = open_conn(path)?;
        // The writer revisits the recent pages of every device's series and rollups: keep them
        // in memory (32 MiB) rather than reading them back from the file on every batch.
        conn.pragma_update(None, "cache_size", -32_768)?;
        // Checkpoint every 8 192 pages (32 MiB of WAL) rather than 1 000: a hot page rewritten by
        // many batches is copied into the database once per checkpoint, not once per few batches.
        conn.pragma_update(None, "wal_autocheckpoint", 8_192)?;
        migrate(&mut conn)
            .with_context(|| format!("cannot migrate database {}", path.display()))?;
        Ok(Store {
            path: path.to_owned(),
            conn,
            caches: Default::default(),
            sink: None,
        })
    }

    /// From now on, queue every stored message (as `encode` writes it) and every changed rollup
    /// slot for the time-series sink, in the transaction that stores them. (Temporary
    /// triggers: a gateway without a sink pays nothing.)
    pub fn enable_sink(&mut self, encode: SinkEncoder) -> anyhow::Result<()> {
        self.conn.execute_batch(
            "CREATE TEMP TRIGGER IF NOT EXISTS sink_slot_inserted AFTER INSERT ON main.point_slots BEGIN
                 INSERT INTO sink_dirty_slots (slot_ms, version) VALUES (NEW.slot_ms, 1)
                 ON CONFLICT (slot_ms) DO UPDATE SET version = version + 1;
             END;
             CREATE TEMP TRIGGER IF NOT EXISTS sink_slot_updated AFTER UPDATE ON main.point_slots BEGIN
                 INSERT INTO sink_dirty_slots (slot_ms, version) VALUES (NEW.slot_ms, 1)
                 ON CONFLICT (slot_ms) DO UPDATE SET version = version + 1;
             END;",
        )?;
        self.sink = Some(encode);
        Ok(())
    }

    /// A reader of a copy of the record (what `ems-gateway backup` writes), opened read-only:
    /// the verifier's view of an export, which checking it must not change. The copy must be of
    /// this gateway's schema; an older one is opened by the gateway that wrote it.
    pub fn read_copy(path: &Path) -> anyhow::Result<crate::view::Reader> {
        anyhow::ensure!(path.exists(), "no database at {}", path.display());
        let reader = SqliteReader::open(path, true)?;
        let version = reader
            .with(schema::version)
            .with_context(|| format!("{} is not a gateway's database", path.display()))?;
        anyhow::ensure!(
            version == schema::MIGRATIONS.len() as i64,
            "{} has schema version {version}; this gateway reads version {}",
            path.display(),
            schema::MIGRATIONS.len()
        );
        Ok(crate::view::Reader::new(reader))
    }

    /// A reader of this database, with connections of its own.
    pub fn reader(&self) -> anyhow::Result<crate::view::Reader> {
        Ok(crate::view::Reader::new(SqliteReader::open(
            &self.path, false,
        )?))
    }
}

pub use crate::clock::rfc3339;
