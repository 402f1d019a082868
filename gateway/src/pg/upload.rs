//! PostgreSQL's upload outbox ([`UploadStore`]): one outbox for the database. One gateway at a
//! time makes the records, and one sends to each endpoint (the holders of session advisory
//! locks, taken over when their sessions end), so that each record is made once and sent in
//! order.

use anyhow::Context as _;
use postgres::{Client, NoTls};

use super::redact;
use crate::storage::UploadStore;

/// The maker's lock; each endpoint's sender locks (SENDERS, hashtext(endpoint)).
const MAKER_LOCK: i64 = 7_243_005;
const SENDERS: i32 = 7_243_006;

pub struct PgOutbox {
    url: String,
    /// `None` only while being dropped.
    client: Option<Client>,
    /// The role this connection holds the lock of.
    leads: Option<Option<String>>,
}

impl PgOutbox {
    pub fn connect(url: &str) -> anyhow::Result<PgOutbox> {
        let mut o = PgOutbox {
            url: url.to_owned(),
            client: None,
            leads: None,
        };
        o.client()?;
        Ok(o)
    }

    /// The connection, reopened if the server closed it (and with it any lock).
    fn client(&mut self) -> anyhow::Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(Client::connect(&self.url, NoTls).with_context(|| {
                format!("cannot connect to PostgreSQL at {}", redact(&self.url))
            })?);
            self.leads = None;
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

impl UploadStore for PgOutbox {
    fn leads(&mut self, endpoint: Option<&str>) -> anyhow::Result<bool> {
        let role = endpoint.map(str::to_owned);
        // Reopened if the server closed it, which let go of any lock it held.
        self.client()?;
        if let Some(held) = &self.leads {
            // One role a connection.
            return Ok(*held == role);
        }
        let taken: bool = match endpoint {
            None => self
                .client()?
                .query_one("SELECT pg_try_advisory_lock($1)", &[&MAKER_LOCK])?
                .get(0),
            Some(e) => self
                .client()?
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))",
                    &[&SENDERS, &e],
                )?
                .get(0),
        };
        if taken {
            self.leads = Some(role);
        }
        Ok(taken)
    }

    fn next_start(&mut self, kind: &str, default: i64) -> anyhow::Result<i64> {
        let c = self.client()?;
        c.execute(
            "INSERT INTO upload_state (kind, next_start_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&kind, &default],
        )?;
        Ok(c.query_one(
            "SELECT next_start_ms FROM upload_state WHERE kind = $1",
            &[&kind],
        )?
        .get(0))
    }

    fn push(
        &mut self,
        kind: &str,
        (start, end): (i64, i64),
        record: &serde_json::Value,
        record_id: &str,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        let mut tx = self.client()?.transaction()?;
        tx.execute(
            "INSERT INTO upload_outbox (kind, period_start_ms, record_id, body, created_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&kind, &start, &record_id, &record.to_string(), &now_ms],
        )?;
        tx.execute(
            "UPDATE upload_state SET next_start_ms = $2 WHERE kind = $1",
            &[&kind, &end],
        )?;
        Ok(tx.commit()?)
    }

    fn next_for(&mut self, endpoint: &str) -> anyhow::Result<Option<(i64, String, String)>> {
        Ok(self
            .client()?
            .query_opt(
                "SELECT id, record_id, body FROM upload_outbox
                 WHERE id > COALESCE((SELECT MAX(outbox_id) FROM upload_acks WHERE endpoint = $1), 0)
                 ORDER BY id LIMIT 1",
                &[&endpoint],
            )?
            .map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    fn confirm(&mut self, endpoint: &str, outbox_id: i64, now_ms: i64) -> anyhow::Result<()> {
        self.client()?.execute(
            "INSERT INTO upload_acks (endpoint, outbox_id, acked_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&endpoint, &outbox_id, &now_ms],
        )?;
        Ok(())
    }

    fn status(&mut self, endpoint: &str) -> anyhow::Result<(i64, i64, Option<String>)> {
        let c = self.client()?;
        let records: i64 = c
            .query_one("SELECT COUNT(*) FROM upload_outbox", &[])?
            .get(0);
        let confirmed: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM upload_acks WHERE endpoint = $1",
                &[&endpoint],
            )?
            .get(0);
        let last = c
            .query_opt(
                "SELECT o.record_id FROM upload_acks a JOIN upload_outbox o ON o.id = a.outbox_id
                 WHERE a.endpoint = $1 ORDER BY a.outbox_id DESC LIMIT 1",
                &[&endpoint],
            )?
            .map(|r| r.get(0));
        Ok((records, confirmed, last))
    }
}

impl Drop for PgOutbox {
    /// As the reader's: the client's drop blocks, which a runtime's own thread may not.
    fn drop(&mut self) {
        if let (Some(client), Ok(_)) = (self.client.take(), tokio::runtime::Handle::try_current()) {
            std::thread::spawn(move || drop(client));
        }
    }
}
