//! The edge's side of protocol v1.2's evidence: its Ed25519 key and each device's chain.
//!
//! Every result is signed as it is numbered, before it is spooled, so what the spool keeps and
//! sends again is the signed message. Each device's chain head (its last number and that
//! message's digest) lives in memory and is written to `{data_dir}/chain.json` when the agent
//! stops. At the next start a head is taken up only if its number is still the device's last
//! (nothing was numbered after it); otherwise (a crash, a lost file) the device's next message
//! starts a new chain (`prev` all zeros), which the gateway shows as a restart of that chain.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ems_core::evidence::{hex, unhex, EdgeKey, CHAIN_START};
use ems_core::wire::Telemetry;
pub use ems_process::key_file::{keygen, read_key, SigningSeed};

const CHAIN_FILE: &str = "chain.json";

/// Signs each device's results in its chain.
pub struct Signer {
    key: EdgeKey,
    /// Device -> (its last signed number, that message's digest).
    heads: HashMap<String, (u64, [u8; 32])>,
    path: PathBuf,
}

impl Signer {
    /// The key, and the chain heads saved at the last stop that `last` (each device's last
    /// number) shows are still current.
    pub fn open(
        seed: &SigningSeed,
        data_dir: &Path,
        last: impl Fn(&str) -> u64,
    ) -> anyhow::Result<Signer> {
        let path = data_dir.join(CHAIN_FILE);
        let saved: HashMap<String, (u64, String)> = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "The chain heads are unreadable; every device starts a new chain.");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut heads = HashMap::new();
        for (device, (seq, digest)) in saved {
            match unhex::<32>(&digest) {
                Some(d) if seq == last(&device) => {
                    heads.insert(device, (seq, d));
                }
                _ => {
                    tracing::warn!(device = %device, "Numbers were taken after the saved chain head (the agent did not stop cleanly); the device starts a new chain.")
                }
            }
        }
        Ok(Signer {
            key: EdgeKey::from_seed(seed.0),
            heads,
            path,
        })
    }

    /// Signs `t`, linking it to its device's previous message when that was `t.seq - 1`.
    pub fn sign(&mut self, t: &mut Telemetry) {
        let prev = match self.heads.get(&t.device) {
            Some(&(seq, digest)) if seq + 1 == t.seq => digest,
            _ => CHAIN_START,
        };
        let digest = self.key.sign(t, prev);
        self.heads.insert(t.device.clone(), (t.seq, digest));
    }

    /// Writes the chain heads (a new file, synced, renamed over the old).
    pub fn save(&self) -> anyhow::Result<()> {
        let heads: HashMap<&str, (u64, String)> = self
            .heads
            .iter()
            .map(|(d, (seq, digest))| (d.as_str(), (*seq, hex(digest))))
            .collect();
        let tmp = self.path.with_extension("json.tmp");
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(&heads)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ems_core::evidence::{verify, Content, PublicKey};
    use ems_core::wire::PointValue;
    use ems_core::Quality;

    fn message(seq: u64) -> Telemetry {
        Telemetry {
            v: 1,
            site: "s".into(),
            edge: "e".into(),
            device: "m1".into(),
            seq,
            ts_ms: seq as i64 * 1000,
            points: vec![PointValue {
                id: "kwh".into(),
                v: Some(seq as f64),
                q: Quality::Good,
            }],
            signed: None,
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ems-evidence-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn chains_continue_across_a_clean_stop_and_restart_after_a_crash() {
        let dir = scratch("chain");
        let seed = SigningSeed([3; 32]);
        let public = PublicKey::from_hex(&EdgeKey::from_seed(seed.0).public_hex()).unwrap();
        let mut signer = Signer::open(&seed, &dir, |_| 0).unwrap();
        let mut chain = Vec::new();
        for seq in 1..=3 {
            let mut t = message(seq);
            signer.sign(&mut t);
            chain.push(t);
        }
        signer.save().unwrap();
        // A clean restart: the head is still the device's last number, the chain goes on.
        let mut again = Signer::open(&seed, &dir, |_| 3).unwrap();
        let mut t4 = message(4);
        again.sign(&mut t4);
        chain.push(t4);
        let mut prev = CHAIN_START;
        for t in &chain {
            let (digest, named) =
                verify(&Content::of(t), t.signed.as_ref().unwrap(), &public).unwrap();
            assert_eq!(named, prev, "seq {} names its predecessor", t.seq);
            prev = digest;
        }
        // After a crash numbers went on past the saved head: a new chain starts.
        let mut crashed = Signer::open(&seed, &dir, |_| 7).unwrap();
        let mut t8 = message(8);
        crashed.sign(&mut t8);
        assert_eq!(t8.signed.unwrap().prev, hex(&CHAIN_START));
    }
}
