//! PostgreSQL's queue for the time-series sink ([`SinkStore`]): every slot's active gateway
//! queues what it stores; one gateway of the database at a time sends (the holder of a session
//! advisory lock, taken over when its session ends), so that no line is sent twice at once.

use anyhow::Context as _;
use postgres::{Client, NoTls};

use super::redact;
use crate::storage::SinkStore;

/// The sender's lock (beside 7243001-7243003: migrations, ledger, alarms).
const SENDER_LOCK: i64 = 7_243_004;

pub struct PgSinkQueue {
    url: String,
    /// `None` only while being dropped.
    client: Option<Client>,
    /// This connection holds the sender's lock.
    sender: bool,
}

impl PgSinkQueue {
    pub fn connect(url: &str) -> anyhow::Result<PgSinkQueue> {
        let mut q = PgSinkQueue {
            url: url.to_owned(),
            client: None,
            sender: false,
        };
        q.client()?;
        Ok(q)
    }

    /// The connection, reopened if the server closed it (and with it the sender's lock).
    fn client(&mut self) -> anyhow::Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(Client::connect(&self.url, NoTls).with_context(|| {
                format!("cannot connect to PostgreSQL at {}", redact(&self.url))
            })?);
            self.sender = false;
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Whether this gateway sends: takes the sender's lock if it is free.
    fn sends(&mut self) -> anyhow::Result<bool> {
        if !self.sender {
            self.sender = self
                .client()?
                .query_one("SELECT pg_try_advisory_lock($1)", &[&SENDER_LOCK])?
                .get(0);
        }
        Ok(self.sender)
    }
}

impl SinkStore for PgSinkQueue {
    fn depth(&mut self) -> anyhow::Result<i64> {
        Ok(self
            .client()?
            .query_one("SELECT COUNT(*) FROM sink_queue", &[])?
            .get(0))
    }

    fn oldest(&mut self, max: usize) -> anyhow::Result<Vec<(i64, String)>> {
        if !self.sends()? {
            return Ok(Vec::new());
        }
        Ok(self
            .client()?
            .query(
                "SELECT id, lines FROM sink_queue ORDER BY id LIMIT $1",
                &[&(max as i64)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn dirty_slots(&mut self, max: usize) -> anyhow::Result<Vec<(i64, i64)>> {
        if !self.sends()? {
            return Ok(Vec::new());
        }
        Ok(self
            .client()?
            .query(
                "SELECT slot_ms, version FROM sink_dirty_slots ORDER BY slot_ms LIMIT $1",
                &[&(max as i64)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn remove(&mut self, ids: &[i64], slots: &[(i64, i64)]) -> anyhow::Result<()> {
        let mut tx = self.client()?.transaction()?;
        // By id, never "up to": several writers take ids before they commit, so a lower id may
        // become visible after a higher one was sent.
        tx.execute("DELETE FROM sink_queue WHERE id = ANY($1)", &[&ids])?;
        let (slot, version): (Vec<i64>, Vec<i64>) = slots.iter().copied().unzip();
        tx.execute(
            "DELETE FROM sink_dirty_slots d USING unnest($1::int8[], $2::int8[]) AS u(s, v)
             WHERE d.slot_ms = u.s AND d.version = u.v",
            &[&slot, &version],
        )?;
        tx.commit()?;
        Ok(())
    }
}

impl Drop for PgSinkQueue {
    /// As the reader's: the client's drop blocks, which a runtime's own thread may not.
    fn drop(&mut self) {
        if let (Some(client), Ok(_)) = (self.client.take(), tokio::runtime::Handle::try_current()) {
            std::thread::spawn(move || drop(client));
        }
    }
}
