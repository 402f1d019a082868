//! The operator audit log: what people (and the gateway at its start) did to the record or to
//! what the figures are drawn with, each entry with who, when and why, chained by SHA-256 so
//! that an entry removed, changed or slipped in shows. Entries: a gap declared lost, an alarm
//! acknowledged, an edge's key enrolled, a configuration or data file that changed since the
//! gateway last started.
//! Each backend appends in the transaction of the act itself (`append` on SQLite and PostgreSQL
//! both build the entry's digest here) and lists the log; [`check`] recomputes the chain.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::clock::rfc3339;

/// One act, as it is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub at_ms: i64,
    /// The operator's name (from their token), or `gateway` for what the gateway noted itself.
    pub who: String,
    /// `declare_lost`, `ack_alarm`, `enrol_edge`, `file_changed`.
    pub action: String,
    /// What it was done to: `device #from..to`, `alarm 12`, `configuration`.
    pub subject: String,
    /// Why, or what: the operator's reason, the alarm's message, a file's new SHA-256.
    pub detail: String,
}

impl Entry {
    /// An operator declared `device`'s numbers `from..=to` lost.
    pub fn declare_lost(
        device: &str,
        (from, to): (i64, i64),
        by: &str,
        reason: &str,
        at_ms: i64,
    ) -> Entry {
        Entry {
            at_ms,
            who: by.into(),
            action: "declare_lost".into(),
            subject: format!("{device} #{from}..{to}"),
            detail: reason.into(),
        }
    }

    /// A configuration or data file changed since it was last logged: declared by an operator
    /// (`ems-gateway declare-change`), or else found by the gateway at its start. The detail
    /// begins with the file's new SHA-256 (what the next start compares), then the one before
    /// and why.
    pub fn file_changed(
        name: &str,
        (sha256, before): (&str, Option<&str>),
        declared: Option<&Declared>,
        at_ms: i64,
    ) -> Entry {
        let before = before.map_or(String::new(), |b| format!(" (before: {b})"));
        let (who, why) = match declared {
            Some(d) => (d.by.as_str(), d.reason.as_str()),
            None if before.is_empty() => ("gateway", "first logged at the gateway's start"),
            None => (
                "gateway",
                "found changed at the gateway's start; no one declared it (ems-gateway declare-change)",
            ),
        };
        Entry {
            at_ms,
            who: who.into(),
            action: "file_changed".into(),
            subject: name.into(),
            detail: format!("{sha256}{before}: {why}"),
        }
    }

    /// An operator enrolled `key` (hex) as `edge`'s, replacing `previous` if it had one.
    pub fn enrol_edge(
        edge: &str,
        key: &str,
        previous: Option<&str>,
        by: &str,
        reason: &str,
        at_ms: i64,
    ) -> Entry {
        let replacing = previous.map_or(String::new(), |p| format!(" replacing {p}"));
        Entry {
            at_ms,
            who: by.into(),
            action: "enrol_edge".into(),
            subject: format!("edge {edge}"),
            detail: format!("key {key}{replacing}: {reason}"),
        }
    }

    /// An operator acknowledged alarm `id` (`what`: its kind and subject).
    pub fn ack_alarm(id: i64, what: &str, by: &str, at_ms: i64) -> Entry {
        Entry {
            at_ms,
            who: by.into(),
            action: "ack_alarm".into(),
            subject: format!("alarm {id}"),
            detail: what.into(),
        }
    }
}

/// The digest that starts the log.
pub const START: [u8; 32] = [0; 32];

impl Entry {
    /// SHA-256 over the previous entry's digest and this entry's fields (each length-prefixed).
    pub fn digest(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"ems audit v1\0");
        h.update(prev);
        h.update(self.at_ms.to_be_bytes());
        for s in [&self.who, &self.action, &self.subject, &self.detail] {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        }
        h.finalize().into()
    }
}

/// One entry as `/api/v1/audit` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub who: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
    pub digest: String,
}

impl AuditRow {
    pub fn of(id: i64, e: Entry, digest: &[u8]) -> AuditRow {
        AuditRow {
            id,
            at: rfc3339(e.at_ms),
            who: e.who,
            action: e.action,
            subject: e.subject,
            detail: e.detail,
            digest: crate::storage::hex(digest),
        }
    }
}

/// The log's chain recomputed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuditReport {
    pub entries: u64,
    /// Empty when every entry's digest follows from the one before.
    pub findings: Vec<String>,
}

/// A stored entry: (id, entry, the prev it names, its digest).
pub type StoredEntry = (i64, Entry, Vec<u8>, Vec<u8>);

/// Recomputes the chain over the stored entries in id order.
pub fn check(rows: impl IntoIterator<Item = StoredEntry>) -> AuditReport {
    let mut report = AuditReport::default();
    let mut last = START.to_vec();
    for (id, entry, prev, digest) in rows {
        report.entries += 1;
        if prev != last {
            report.findings.push(format!(
                "audit entry {id}: names {} as the entry before it, which is {} (an entry removed or slipped in)",
                crate::storage::hex(&prev),
                crate::storage::hex(&last)
            ));
        }
        let prev32: [u8; 32] = prev.as_slice().try_into().unwrap_or(START);
        if entry.digest(&prev32).as_slice() != digest.as_slice() {
            report.findings.push(format!(
                "audit entry {id} ({} by {}): its fields do not give its digest (changed after it was logged)",
                entry.action, entry.who
            ));
        }
        last = digest;
    }
    report
}

/// Who changed the configuration or data files, and why (`ems-gateway declare-change`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub by: String,
    pub reason: String,
}

/// The file entries to log: each of `digests` whose newest logged entry names another digest,
/// with the `file_changed` entries' details as logged (file name -> detail).
pub fn changed_files(
    digests: &std::collections::BTreeMap<String, String>,
    logged: &std::collections::HashMap<String, String>,
    declared: Option<&Declared>,
    at_ms: i64,
) -> Vec<Entry> {
    digests
        .iter()
        .filter_map(|(name, sha)| {
            // The detail begins with the digest (before 2026-12 it was only the digest).
            let before = logged.get(name).and_then(|d| d.split([' ', ':']).next());
            (before != Some(sha.as_str()))
                .then(|| Entry::file_changed(name, (sha, before), declared, at_ms))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(who: &str, detail: &str) -> Entry {
        Entry {
            at_ms: 1_700_000_000_000,
            who: who.into(),
            action: "declare_lost".into(),
            subject: "m1 #5..9".into(),
            detail: detail.into(),
        }
    }

    fn log(entries: &[Entry]) -> Vec<StoredEntry> {
        let mut prev = START;
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let d = e.digest(&prev);
                let row = (i as i64 + 1, e.clone(), prev.to_vec(), d.to_vec());
                prev = d;
                row
            })
            .collect()
    }

    #[test]
    fn a_file_is_logged_again_only_when_its_digest_changes_whatever_its_entry_says() {
        let (aa, bb) = ("aa".repeat(32), "bb".repeat(32));
        let digests = std::collections::BTreeMap::from([
            ("configuration".to_owned(), aa.clone()),
            ("limits".to_owned(), bb.clone()),
        ]);
        // Entries before 2026-12 held only the digest; later ones the digest, then why.
        let logged = std::collections::HashMap::from([
            ("configuration".to_owned(), aa.clone()),
            (
                "limits".to_owned(),
                format!("{aa} (before: {bb}): a reason"),
            ),
        ]);
        let by = Declared {
            by: "energy_manager".into(),
            reason: "new edition".into(),
        };
        let changed = changed_files(&digests, &logged, Some(&by), 5);
        assert_eq!(
            changed
                .iter()
                .map(|e| (e.subject.as_str(), e.who.as_str(), e.detail.clone()))
                .collect::<Vec<_>>(),
            [(
                "limits",
                "energy_manager",
                format!("{bb} (before: {aa}): new edition")
            )]
        );
    }

    #[test]
    fn a_changed_removed_or_inserted_entry_shows() {
        let entries = [
            entry("ops", "meter replaced"),
            entry("ops2", "link cut"),
            entry("ops", "x"),
        ];
        let good = log(&entries);
        assert_eq!(
            check(good.clone()),
            AuditReport {
                entries: 3,
                findings: vec![]
            }
        );

        let mut changed = good.clone();
        changed[1].1.who = "someone else".into();
        let r = check(changed);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert!(r.findings[0].starts_with("audit entry 2"));

        let mut removed = good.clone();
        removed.remove(1);
        let r = check(removed);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert!(r.findings[0].contains("removed or slipped in"));
    }
}
