//! Per-device sequence numbers that only grow, across restarts and power cuts.
//!
//! A number is written to disk (fsync, then atomic rename) before any message carrying it
//! leaves the board, so a restart can never hand out a number twice. A message lost before
//! publishing shows as a gap at the gateway, which is honest; a reused number would be dropped
//! there as a duplicate, which would silently lose data.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub struct SeqStore {
    path: PathBuf,
    last: BTreeMap<String, u64>,
}

impl SeqStore {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let path = dir.join("seq.json");
        let last = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; refusing to restart numbering",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(SeqStore { path, last })
    }

    /// Takes the next number for `device` (the first is 1). Call [`SeqStore::persist`] before
    /// publishing anything that carries it.
    pub fn take(&mut self, device: &str) -> u64 {
        let n = self.last.entry(device.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    pub fn last(&self, device: &str) -> u64 {
        self.last.get(device).copied().unwrap_or(0)
    }

    pub fn persist(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(&self.last)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_continue_after_reopening() {
        let dir = std::env::temp_dir().join(format!("ems-seq-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = SeqStore::open(&dir).unwrap();
        assert_eq!(s.take("a"), 1);
        assert_eq!(s.take("a"), 2);
        assert_eq!(s.take("b"), 1);
        s.persist().unwrap();
        let mut s = SeqStore::open(&dir).unwrap();
        assert_eq!(s.take("a"), 3);
        assert_eq!(s.last("b"), 1);
        fs::write(dir.join("seq.json"), b"{garbage").unwrap();
        assert!(
            SeqStore::open(&dir).is_err(),
            "a corrupt store must not restart at 1"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
