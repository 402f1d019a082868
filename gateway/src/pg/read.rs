//! The read side of PostgreSQL: what the API, reports and alarms read ([`ReadRecord`]), over
//! every site in the database, whichever slot wrote it (the central view of a group).

use std::collections::HashMap;

use anyhow::Context as _;
use ems_energy::counter::PointSlot;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};

use super::{redact, LEDGER_LOCK};
use crate::batch::ChainRow;
use crate::clock::rfc3339;
use crate::evidence::{EdgeKeys, EvidenceCheck, EvidenceReport, StoredEvidence};
use crate::pool::Pool;
use crate::storage::AccountingRules;
use crate::view::{
    export_message, AnomalyRow, ChainView, DeclareOutcome, DeviceRow, EdgeRow, Integrity,
    LostRange, QuarantineRow, QuarantineTotal, ReadRecord, Recount, EXPORT_HEADER, PAYLOAD_PREVIEW,
};

/// Sessions of its own ([`Pool`]), each reopened when the server closed it.
pub struct PgReader {
    url: String,
    conns: Pool<Conn>,
}

struct Conn {
    client: Client,
    /// The statements read often (a report reads each point's slots for every period).
    point_slots: Statement,
}

impl PgReader {
    /// Connects to a database a gateway has set up (its schema is the writer's to migrate).
    pub fn connect(url: &str) -> anyhow::Result<PgReader> {
        Ok(PgReader {
            url: url.to_owned(),
            conns: Pool::new(Conn::open(url)?),
        })
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut conn = self
            .conns
            .get(|| Conn::open(&self.url), |c| !c.client.is_closed())?;
        f(conn.as_mut().expect("opened by the pool"))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.with_conn(|c| f(&mut c.client))
    }
}

impl Conn {
    fn open(url: &str) -> anyhow::Result<Conn> {
        let mut client = connect(url)?;
        let point_slots = client.prepare(
            "SELECT slot_ms, delta, covered_ms, estimated FROM point_slots
             WHERE device = $1 AND point = $2 AND slot_ms >= $3 AND slot_ms < $4
             ORDER BY slot_ms",
        )?;
        Ok(Conn {
            client,
            point_slots,
        })
    }
}

impl Drop for PgReader {
    /// The client's drop blocks on its connection's own runtime, which panics on a thread that
    /// drives async tasks (the API's state goes when the HTTP server stops): closed on a thread
    /// of its own there.
    fn drop(&mut self) {
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        for conn in self.conns.take_all() {
            if in_runtime {
                std::thread::spawn(move || drop(conn));
            }
        }
    }
}

fn connect(url: &str) -> anyhow::Result<Client> {
    Client::connect(url, NoTls)
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))
}

/// Messages fetched at a time while looking for a point's last good reading (most are found in
/// the newest; a meter that stopped answering takes more fetches).
const LAST_READING_FETCH: i32 = 8;

impl ReadRecord for PgReader {
    fn devices(&self) -> anyhow::Result<Vec<DeviceRow>> {
        self.with(|c| {
            let mut gaps: HashMap<String, Vec<[i64; 2]>> = HashMap::new();
            for r in c.query(
                "SELECT device, from_seq, to_seq FROM gaps ORDER BY device, from_seq",
                &[],
            )? {
                gaps.entry(r.get(0)).or_default().push([r.get(1), r.get(2)]);
            }
            let mut lost: HashMap<String, Vec<LostRange>> = HashMap::new();
            for r in c.query(
                "SELECT device, from_seq, to_seq, declared_ms, declared_by, reason FROM lost
                 ORDER BY device, from_seq",
                &[],
            )? {
                lost.entry(r.get(0)).or_default().push(LostRange {
                    from_seq: r.get(1),
                    to_seq: r.get(2),
                    declared: rfc3339(r.get(3)),
                    declared_by: r.get(4),
                    reason: r.get(5),
                });
            }
            let online: HashMap<String, bool> = c
                .query("SELECT edge, online FROM edges", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut chains: HashMap<String, ChainView> = HashMap::new();
            for r in c.query(
                "SELECT device, head_seq, head_digest, verified_through, signed, verified, restarts,
                        refused
                 FROM chains",
                &[],
            )? {
                let chain = ChainRow {
                    head_seq: r.get(1),
                    head_digest: super::bytes32(r.get(2))?,
                    verified_through: r.get(3),
                    signed: r.get(4),
                    verified: r.get(5),
                    restarts: r.get(6),
                    refused: r.get(7),
                };
                chains.insert(r.get(0), chain.into());
            }
            let rows = c.query(
                "SELECT device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages,
                        duplicates, conflicts
                 FROM devices ORDER BY device COLLATE \"C\"",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    let (id, edge): (String, String) = (r.get(0), r.get(2));
                    let (g, l) = (gaps.remove(&id), lost.remove(&id));
                    DeviceRow {
                        online: online.get(&edge).copied().unwrap_or(false),
                        site: r.get(1),
                        last_seq: r.get(3),
                        last_sample: rfc3339(r.get(4)),
                        last_seen: rfc3339(r.get(5)),
                        messages: r.get(6),
                        duplicates: r.get(7),
                        conflicts: r.get(8),
                        missing: 0,
                        gaps: Vec::new(),
                        lost: 0,
                        lost_ranges: Vec::new(),
                        chain: chains.remove(&id),
                        edge,
                        id,
                    }
                    .with_ranges(g.unwrap_or_default(), l.unwrap_or_default())
                })
                .collect())
        })
    }

    fn edges(&self) -> anyhow::Result<Vec<EdgeRow>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT edge, site, online, devices, changed_ms, spool_depth, spool_dropped
                 FROM edges ORDER BY edge COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| EdgeRow {
                id: r.get(0),
                site: r.get(1),
                online: r.get(2),
                devices: serde_json::from_str(r.get(3)).unwrap_or_default(),
                changed: rfc3339(r.get(4)),
                spool_depth: r.get(5),
                spool_dropped: r.get(6),
            })
            .collect())
        })
    }

    fn sequence_totals(&self) -> anyhow::Result<(i64, i64)> {
        self.with(|c| {
            // Summed as numeric (no overflow near 2^63), given as a float like SQLite's TOTAL.
            let r = c.query_one(
                "SELECT COALESCE((SELECT SUM(to_seq - from_seq + 1) FROM gaps), 0)::float8,
                        COALESCE((SELECT SUM(to_seq - from_seq + 1) FROM lost), 0)::float8",
                &[],
            )?;
            Ok((r.get::<_, f64>(0) as i64, r.get::<_, f64>(1) as i64))
        })
    }

    fn message_qualities(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, Vec<ems_core::Quality>)>> {
        self.with(|c| {
            c.query(
                "SELECT ts_ms, points FROM messages
                 WHERE device = $1 AND ts_ms >= $2 AND ts_ms < $3 ORDER BY ts_ms, seq",
                &[&device, &from_ms, &to_ms],
            )?
            .iter()
            .map(|r| {
                let points: Option<Vec<u8>> = r.get(1);
                Ok((r.get(0), crate::view::qualities(points.as_deref())?))
            })
            .collect()
        })
    }

    fn seq_span(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Option<crate::view::SeqSpan>> {
        self.with(|c| {
            let r = c.query_one(
                "SELECT MIN(seq), MAX(seq), COUNT(*) FROM messages
                 WHERE device = $1 AND ts_ms >= $2 AND ts_ms < $3",
                &[&device, &from_ms, &to_ms],
            )?;
            Ok(match (r.get(0), r.get(1)) {
                (Some(first_seq), Some(last_seq)) => Some(crate::view::SeqSpan {
                    first_seq,
                    last_seq,
                    messages: r.get(2),
                }),
                _ => None,
            })
        })
    }

    fn last_reading(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Option<(i64, f64)>> {
        self.with(|c| {
            let Some(series) = c
                .query_opt(
                    "SELECT id FROM series WHERE device = $1 AND point = $2",
                    &[&device, &point],
                )?
                .map(|r| r.get::<_, i64>(0))
            else {
                return Ok(None);
            };
            // Newest first, a few at a time (a day's messages are not fetched to find the
            // last one): the first message with a good reading of it is the answer.
            let mut tx = c.build_transaction().read_only(true).start()?;
            let newest_first = tx.bind(
                "SELECT ts_ms, points FROM messages
                 WHERE device = $1 AND ts_ms >= $2 AND ts_ms < $3 ORDER BY ts_ms DESC, seq DESC",
                &[&device, &from_ms, &to_ms],
            )?;
            loop {
                let rows = tx.query_portal(&newest_first, LAST_READING_FETCH)?;
                for r in &rows {
                    let points: Option<Vec<u8>> = r.get(1);
                    if let Some(v) = crate::view::good_value(series, points.as_deref())? {
                        return Ok(Some((r.get(0), v)));
                    }
                }
                if rows.len() < LAST_READING_FETCH as usize {
                    return Ok(None);
                }
            }
        })
    }

    fn first_slot(&self, device: &str, point: &str) -> anyhow::Result<Option<i64>> {
        self.with(|c| {
            Ok(c.query_one(
                "SELECT MIN(slot_ms) FROM point_slots WHERE device = $1 AND point = $2",
                &[&device, &point],
            )?
            .get(0))
        })
    }

    fn point_slots(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, PointSlot)>> {
        self.with_conn(|c| {
            Ok(c.client
                .query(&c.point_slots, &[&device, &point, &from_ms, &to_ms])?
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        PointSlot {
                            delta: r.get(1),
                            covered_ms: r.get(2),
                            estimated: r.get(3),
                        },
                    )
                })
                .collect())
        })
    }

    fn quarantine(&self, limit: i64) -> anyhow::Result<Vec<QuarantineRow>> {
        self.with(|c| {
            let preview = PAYLOAD_PREVIEW as i32;
            Ok(c.query(
                "SELECT id, received_ms, topic, reason, substring(payload FROM 1 FOR $2),
                        length(payload)::int8, payload_bytes, payload_sha256
                 FROM quarantine ORDER BY id DESC LIMIT $1",
                &[&limit, &preview],
            )?
            .iter()
            .map(|r| {
                let (kept, full): (i64, Option<i64>) = (r.get(5), r.get(6));
                QuarantineRow {
                    id: r.get(0),
                    received: rfc3339(r.get(1)),
                    topic: r.get(2),
                    reason: r.get(3),
                    payload: String::from_utf8_lossy(r.get::<_, &[u8]>(4)).into_owned(),
                    truncated: QuarantineRow::is_truncated(kept, full),
                    payload_bytes: full,
                    payload_sha256: r.get(7),
                }
            })
            .collect())
        })
    }

    fn quarantine_payload(&self, id: i64) -> anyhow::Result<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(
                c.query_opt("SELECT payload FROM quarantine WHERE id = $1", &[&id])?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn quarantine_totals(&self) -> anyhow::Result<Vec<QuarantineTotal>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT reason, count, bytes FROM quarantine_totals ORDER BY reason COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| QuarantineTotal {
                reason: r.get(0),
                count: r.get(1),
                bytes: r.get(2),
            })
            .collect())
        })
    }

    fn anomalies(&self, limit: i64) -> anyhow::Result<Vec<AnomalyRow>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT device, point, ts_ms, kind, detail, withdrawn_ms FROM anomalies
                 ORDER BY id DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| AnomalyRow {
                device: r.get(0),
                point: r.get(1),
                at: rfc3339(r.get(2)),
                kind: r.get(3),
                detail: r.get(4),
                withdrawn: r.get::<_, Option<i64>>(5).map(rfc3339),
            })
            .collect())
        })
    }

    fn verify_rollups(&self, rules: &AccountingRules) -> anyhow::Result<Integrity> {
        // A connection of its own: the check reads every stored message.
        let mut c = connect(&self.url)?;
        let ids: HashMap<(String, String), i64> = c
            .query("SELECT device, point, id FROM series", &[])?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let messages = c.prepare(
            "SELECT ts_ms, points FROM messages WHERE device = $1 AND points IS NOT NULL
             ORDER BY ts_ms, seq",
        )?;
        let mut recount = Recount::default();
        for (device, points) in &rules.tracked {
            let tracks = points
                .iter()
                .filter_map(|(point, rule)| {
                    let id = ids.get(&(device.clone(), point.clone()))?;
                    Some((*id, (point.clone(), rule)))
                })
                .collect();
            recount.device(device, tracks, rules.max_gap_ms, |each| {
                // Streamed: a device's years of messages are never all in memory.
                let mut rows = c.query_raw(&messages, [device as &dyn ToSql])?;
                while let Some(r) = rows.next()? {
                    each(r.get(0), r.get::<_, &[u8]>(1))?;
                }
                Ok(())
            })?;
        }
        let stored = c
            .query(
                "SELECT device, point, slot_ms, delta, covered_ms, estimated FROM point_slots",
                &[],
            )?
            .iter()
            .map(|r| {
                (
                    (r.get(0), r.get(1), r.get(2)),
                    PointSlot {
                        delta: r.get(3),
                        covered_ms: r.get(4),
                        estimated: r.get(5),
                    },
                )
            })
            .collect();
        // Where retention dropped older days, the first kept sample starts the recount.
        let pruned = c
            .query_one("SELECT COUNT(*) FROM retention", &[])?
            .get::<_, i64>(0)
            > 0;
        Ok(recount.compare(stored, pruned))
    }

    fn verify_evidence(&self, keys: &EdgeKeys) -> anyhow::Result<EvidenceReport> {
        // A connection of its own: the check reads every signed message.
        let mut c = connect(&self.url)?;
        let names: HashMap<i64, String> = c
            .query("SELECT id, point FROM series", &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let pruned = c
            .query_one("SELECT COUNT(*) FROM retention", &[])?
            .get::<_, i64>(0)
            > 0;
        let all = c.prepare(
            "SELECT e.device, e.seq, e.site, e.edge, e.prev, e.digest, e.sig, m.ts_ms, m.points,
                    p.digest
             FROM evidence e
             LEFT JOIN messages m ON m.device = e.device AND m.seq = e.seq
             LEFT JOIN evidence p ON p.device = e.device AND p.seq = e.seq - 1
             ORDER BY e.device COLLATE \"C\", e.seq",
        )?;
        let mut check = EvidenceCheck::new(keys);
        // Streamed: years of signed messages are never all in memory.
        let mut rows = c.query_raw(&all, std::iter::empty::<&dyn ToSql>())?;
        while let Some(r) = rows.next()? {
            let device: String = r.get(0);
            let e = StoredEvidence {
                seq: r.get(1),
                site: r.get(2),
                edge: r.get(3),
                prev: super::bytes32(r.get(4))?,
                digest: super::bytes32(r.get(5))?,
                sig: r.get(6),
            };
            let before = r
                .get::<_, Option<&[u8]>>(9)
                .map(super::bytes32)
                .transpose()?;
            let content = match (r.get::<_, Option<i64>>(7), r.get::<_, Option<&[u8]>>(8)) {
                (Some(ts), Some(blob)) => Some(crate::evidence::named_points(&names, ts, blob)?),
                _ => None,
            };
            check.message(
                &device,
                &e,
                before,
                content.as_ref(),
                content.is_none() && pruned,
            );
        }
        Ok(check.finish())
    }

    fn export_csv(
        &self,
        device: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        out: &mut dyn std::io::Write,
    ) -> anyhow::Result<u64> {
        // A connection of its own: an export is paced by its client.
        let mut c = connect(&self.url)?;
        let mut w = csv::Writer::from_writer(out);
        w.write_record(EXPORT_HEADER)?;
        let names: HashMap<i64, String> = c
            .query("SELECT id, point FROM series", &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let devices: Vec<String> = match device {
            Some(d) => vec![d.to_owned()],
            None => c
                .query(
                    "SELECT DISTINCT device COLLATE \"C\" FROM messages ORDER BY 1",
                    &[],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        };
        let stmt = c.prepare(
            "SELECT seq, ts_ms, points FROM messages
             WHERE device = $1 AND ts_ms >= $2 AND ts_ms < $3 AND points IS NOT NULL
             ORDER BY ts_ms, seq",
        )?;
        let mut n = 0;
        for device in &devices {
            let params: [&dyn ToSql; 3] = [device, &from_ms, &to_ms];
            let mut rows = c.query_raw(&stmt, params)?;
            while let Some(r) = rows.next()? {
                n += export_message(&mut w, &names, device, r.get(0), r.get(1), r.get(2))?;
            }
        }
        w.flush()?;
        Ok(n)
    }

    fn audit(&self, limit: i64) -> anyhow::Result<Vec<crate::audit::AuditRow>> {
        self.with(|c| super::audit_log::list(c, limit))
    }

    fn verify_audit(&self) -> anyhow::Result<crate::audit::AuditReport> {
        self.with(super::audit_log::verify)
    }

    fn log_act(&self, entry: &crate::audit::Entry) -> anyhow::Result<()> {
        self.with(|c| super::audit_log::log_act(c, entry))
    }

    fn note_files(
        &self,
        digests: &std::collections::BTreeMap<String, String>,
        declared: Option<&crate::audit::Declared>,
        now_ms: i64,
    ) -> anyhow::Result<usize> {
        self.with(|c| super::audit_log::note_files(c, digests, declared, now_ms))
    }

    fn declare_lost(
        &self,
        device: &str,
        from_seq: i64,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> anyhow::Result<DeclareOutcome> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // Waits for the batches in flight, and holds new ones, so that no writer splits or
            // closes the gap between this reading it and declaring it.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LEDGER_LOCK])?;
            let Some(to_seq) = tx
                .query_opt(
                    "DELETE FROM gaps WHERE device = $1 AND from_seq = $2 RETURNING to_seq",
                    &[&device, &from_seq],
                )?
                .map(|r| r.get::<_, i64>(0))
            else {
                return Ok(DeclareOutcome::NoSuchGap);
            };
            tx.execute(
                "INSERT INTO lost (device, from_seq, to_seq, declared_ms, declared_by, reason)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&device, &from_seq, &to_seq, &now_ms, &by, &reason],
            )?;
            super::audit_log::append(
                &mut tx,
                &crate::audit::Entry::declare_lost(device, (from_seq, to_seq), by, reason, now_ms),
            )?;
            tx.commit()?;
            Ok(DeclareOutcome::Declared(LostRange::declared(
                from_seq, to_seq, now_ms, by, reason,
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::{PgStore, ScratchDatabase};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_long_read_does_not_hold_up_the_central_views_other_reads() {
        let db = ScratchDatabase::new(
            &ScratchDatabase::default_server(),
            &format!("ems_test_readers_{}", std::process::id()),
        )
        .expect("PostgreSQL on 127.0.0.1:5432 (trust authentication) or EMS_TEST_POSTGRES");
        let _schema = PgStore::connect(&db.url()).unwrap();
        let reader = &PgReader::connect(&db.url()).unwrap();
        // One request holds the first session (a year's balance being read) until told, or 10 s.
        let (tell, told) = mpsc::channel::<()>();
        let (held, holding) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let long = s.spawn(move || {
                reader
                    .with(|_| {
                        held.send(()).unwrap();
                        Ok(told.recv_timeout(Duration::from_secs(10)).is_ok())
                    })
                    .unwrap()
            });
            holding.recv().unwrap();
            // Another is answered meanwhile, on a session opened for it, and only then lets the
            // long one go.
            assert!(reader.devices().unwrap().is_empty());
            tell.send(()).unwrap();
            assert!(
                long.join().unwrap(),
                "the second read waited for the long one to give up its session"
            );
        });
    }
}
