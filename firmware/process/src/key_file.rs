//! A program's signing key on disk (protocol v1.2's evidence): the board's, with which
//! `ems-edge` signs every reading, and the gateway's, with which it signs its reports.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use ems_core::evidence::{hex, unhex, EdgeKey};

/// A secret key as read from its file; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSeed(pub [u8; 32]);

impl std::fmt::Debug for SigningSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSeed(..)")
    }
}

/// Writes a new Ed25519 key to `path` (64 hexadecimal digits, readable by its owner only) and
/// returns its public key. An existing file is never overwritten: a key replaced by mistake would
/// leave its enrolment (a gateway's for an edge, a verifier's for a gateway) naming a key nobody
/// has.
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
            "{} is not a key written by `keygen` (64 hexadecimal digits)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_written_for_its_owner_only_and_never_replaced() {
        let dir = std::env::temp_dir().join(format!("ems-key-file-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
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
        let _ = fs::remove_dir_all(&dir);
    }
}
