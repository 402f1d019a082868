//! Checking the record against the edges' evidence (protocol v1.2): each signed message's stored
//! readings rebuilt into the canonical bytes the edge signed, their digest compared with the one
//! kept, the signature verified with the edge's enrolled key, and each message's `prev` compared
//! with its stored predecessor's digest. A sample edited in the database, a digest or signature
//! replaced, a message swapped for another: each shows as a finding. Both backends feed
//! [`EvidenceCheck`] what they hold; the check itself is here, once.

use std::collections::HashMap;

use ems_core::evidence::{hex, Content, PublicKey, CHAIN_START};
use ems_core::Quality;
use serde::Serialize;

/// Edge name -> the public key its messages are signed with (`[evidence] edge_keys`).
pub type EdgeKeys = HashMap<String, PublicKey>;

/// A signed message's evidence as stored.
#[derive(Debug, Clone)]
pub struct StoredEvidence {
    pub seq: i64,
    pub site: String,
    pub edge: String,
    pub prev: [u8; 32],
    pub digest: [u8; 32],
    pub sig: Vec<u8>,
}

/// A stored message's content: its poll time and points (id, value, quality).
pub type StoredContent = (i64, Vec<(String, Option<f64>, Quality)>);

/// A stored message's packed points with their names (`names`: series id -> point).
pub fn named_points(
    names: &HashMap<i64, String>,
    ts_ms: i64,
    blob: &[u8],
) -> anyhow::Result<StoredContent> {
    let points = crate::packed::unpack(blob)?
        .into_iter()
        .map(|p| {
            let name = names.get(&p.series).cloned().unwrap_or_default();
            (name, p.value, p.quality)
        })
        .collect();
    Ok((ts_ms, points))
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvidenceReport {
    /// Signed messages whose stored readings were rebuilt and compared with their digest.
    pub checked: u64,
    /// Of those, the ones whose signature was verified with an enrolled key.
    pub signatures_verified: u64,
    /// Signed messages whose samples retention has deleted (their digest cannot be rebuilt).
    pub without_samples: u64,
    /// Empty when every signed message's readings, signature and link hold.
    pub findings: Vec<String>,
}

/// The check, fed one device's signed messages at a time.
pub struct EvidenceCheck<'a> {
    keys: &'a EdgeKeys,
    report: EvidenceReport,
}

impl<'a> EvidenceCheck<'a> {
    pub fn new(keys: &'a EdgeKeys) -> EvidenceCheck<'a> {
        EvidenceCheck {
            keys,
            report: EvidenceReport::default(),
        }
    }

    /// One signed message of `device`: `before`, the stored digest of the message numbered just
    /// before it (if stored and signed); `stored`, its content as kept (`None`: its samples were
    /// deleted by retention, `pruned`, or the message is gone).
    pub fn message(
        &mut self,
        device: &str,
        e: &StoredEvidence,
        before: Option<[u8; 32]>,
        stored: Option<&StoredContent>,
        pruned: bool,
    ) {
        let seq = e.seq;
        if let Some(before) = before {
            if e.prev != CHAIN_START && e.prev != before {
                self.report.findings.push(format!(
                    "{device} #{seq}: names {} as its predecessor, but the stored #{} has digest {}",
                    hex(&e.prev),
                    seq - 1,
                    hex(&before)
                ));
            }
        }
        let Some((ts_ms, points)) = stored else {
            if pruned {
                self.report.without_samples += 1;
            } else {
                self.report.findings.push(format!(
                    "{device} #{seq}: its evidence is stored but the message is not (deleted?)"
                ));
            }
            return;
        };
        self.report.checked += 1;
        let content = Content {
            site: &e.site,
            edge: &e.edge,
            device,
            seq: seq as u64,
            ts_ms: *ts_ms,
            points: points
                .iter()
                .map(|(id, v, q)| (id.as_str(), *v, *q))
                .collect(),
        };
        let bytes = content.canonical(&e.prev);
        let digest: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(&bytes).into()
        };
        if digest != e.digest {
            self.report.findings.push(format!(
                "{device} #{seq}: the stored readings are not the ones signed (they give digest {}, the edge's was {})",
                hex(&digest),
                hex(&e.digest)
            ));
            return;
        }
        // The signature over the same canonical bytes the digest was just taken of.
        if let Some(key) = self.keys.get(&e.edge) {
            if key.verifies_raw(&bytes, &e.sig) {
                self.report.signatures_verified += 1;
            } else {
                self.report.findings.push(format!(
                    "{device} #{seq}: the stored signature does not verify with edge `{}`'s enrolled key",
                    e.edge
                ));
            }
        }
    }

    pub fn finish(self) -> EvidenceReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ems_core::evidence::EdgeKey;
    use ems_core::wire::{PointValue, Telemetry};

    fn signed_chain(key: &EdgeKey) -> Vec<(StoredEvidence, StoredContent)> {
        let mut prev = CHAIN_START;
        (1..=3)
            .map(|seq| {
                let mut t = Telemetry {
                    v: 1,
                    site: "s".into(),
                    edge: "e".into(),
                    device: "m1".into(),
                    seq,
                    ts_ms: seq as i64 * 60_000,
                    points: vec![PointValue {
                        id: "kwh".into(),
                        v: Some(seq as f64),
                        q: Quality::Good,
                    }],
                    signed: None,
                };
                let digest = key.sign(&mut t, prev);
                let sig = ems_core::evidence::parse(t.signed.as_ref().unwrap())
                    .unwrap()
                    .1;
                let e = StoredEvidence {
                    seq: seq as i64,
                    site: "s".into(),
                    edge: "e".into(),
                    prev,
                    digest,
                    sig: sig.to_bytes().to_vec(),
                };
                prev = digest;
                (
                    e,
                    (t.ts_ms, vec![("kwh".into(), t.points[0].v, Quality::Good)]),
                )
            })
            .collect()
    }

    fn check(keys: &EdgeKeys, chain: &[(StoredEvidence, StoredContent)]) -> EvidenceReport {
        let mut c = EvidenceCheck::new(keys);
        let mut before = None;
        for (e, content) in chain {
            c.message("m1", e, before, Some(content), false);
            before = Some(e.digest);
        }
        c.finish()
    }

    #[test]
    fn an_intact_chain_passes_and_each_kind_of_tampering_is_found() {
        let key = EdgeKey::from_seed([9; 32]);
        let keys = EdgeKeys::from([(
            "e".to_string(),
            PublicKey::from_hex(&key.public_hex()).unwrap(),
        )]);
        let chain = signed_chain(&key);
        let clean = check(&keys, &chain);
        assert_eq!((clean.checked, clean.signatures_verified), (3, 3));
        assert!(clean.findings.is_empty(), "{:?}", clean.findings);

        // A reading edited in the database.
        let mut edited = chain.clone();
        edited[1].1 .1[0].1 = Some(2.5);
        let r = check(&keys, &edited);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert!(r.findings[0].starts_with("m1 #2: the stored readings are not the ones signed"));

        // The reading and its digest both replaced: the signature and the next link catch it.
        let mut forged = edited.clone();
        forged[1].0.digest = {
            use sha2::Digest as _;
            let c = Content {
                site: "s",
                edge: "e",
                device: "m1",
                seq: 2,
                ts_ms: forged[1].1 .0,
                points: vec![("kwh", Some(2.5), Quality::Good)],
            };
            sha2::Sha256::digest(c.canonical(&forged[1].0.prev)).into()
        };
        let r = check(&keys, &forged);
        assert_eq!(r.findings.len(), 2, "{:?}", r.findings);
        assert!(r.findings[0].contains("#2: the stored signature does not verify"));
        assert!(r.findings[1].contains("#3: names"));

        // Without the key, the broken link still shows.
        let r = check(&EdgeKeys::new(), &forged);
        assert_eq!(r.signatures_verified, 0);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    }

    #[test]
    fn a_message_gone_is_a_finding_unless_retention_took_it() {
        let key = EdgeKey::from_seed([9; 32]);
        let keys = EdgeKeys::new();
        let (e, _) = &signed_chain(&key)[0];
        let mut c = EvidenceCheck::new(&keys);
        c.message("m1", e, None, None, true);
        c.message("m1", e, None, None, false);
        let r = c.finish();
        assert_eq!(r.without_samples, 1);
        assert_eq!(r.findings.len(), 1);
    }
}
