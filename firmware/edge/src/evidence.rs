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

const CHAIN_FILE: &str = "chain.json";

/// An edge's secret key as read from its file; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSeed(pub [u8; 32]);

impl std::fmt::Debug for SigningSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSeed(..)")
    }
}

/// Writes a new key to `path` (64 hexadecimal digits, readable by its owner only) and returns
/// the public key to enrol at the gateway. An existing file is never overwritten: a board's key
/// replaced by mistake would leave its enrolment naming a key nobody has.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).with_context(|| {
        format!(
            "cannot create {} (an existing key is never replaced)",
            path.display()
        )
    })?;
    f.write_all(format!("{}\n", hex(&seed)).as_bytes())?;
    f.sync_all()?;
    Ok(EdgeKey::from_seed(seed).public_hex())
}

/// Reads a key written by [`keygen`]; refuses one that others than its owner may read.
pub fn read_key(path: &Path) -> Result<SigningSeed, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} may be read by others (mode {:o}); `chmod 600` it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    unhex::<32>(text.trim()).map(SigningSeed).ok_or_else(|| {
        format!(
            "{} is not a key written by `ems-edge keygen` (64 hexadecimal digits)",
            path.display()
        )
    })
}

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
    fn a_key_is_written_for_its_owner_only_and_never_replaced() {
        let dir = scratch("key");
        let path = dir.join("edge.key");
        let public = keygen(&path).unwrap();
        let seed = read_key(&path).unwrap();
        assert_eq!(EdgeKey::from_seed(seed.0).public_hex(), public);
        assert!(keygen(&path).is_err(), "an existing key is kept");
        assert_eq!(format!("{seed:?}"), "SigningSeed(..)");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let e = read_key(&path).unwrap_err();
            assert!(e.contains("chmod 600"), "{e}");
        }
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
