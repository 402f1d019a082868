//! Per-device sequence numbers that only grow, across restarts and power cuts.
//!
//! A number is on disk (appended and synced) before any message carrying it leaves the board,
//! so a restart can never hand out a number twice. A message lost before publishing shows as a
//! gap at the gateway, which is honest; a reused number would be dropped there as a duplicate,
//! which would silently lose data.
//!
//! On the board's flash the numbers are `seq.log`, an append-only log of records
//! `[length u32][crc32 u32][body]`: first a snapshot of every device's last number, then one
//! record a poll cycle naming the devices whose numbers advanced (one bit a device when each
//! advanced by one, as in every cycle). A site of 1 000 devices polled every second so appends
//! 136 bytes a second (11.8 MB a day) where rewriting the whole table each cycle, as before,
//! wrote some 20 kB (1.7 GB a day); past [`COMPACT_AT`] the log is rewritten as one snapshot (a new file, synced, renamed
//! over the old). What the file system adds for each sync (a data block and its journal) comes
//! on top, the same for any scheme that syncs once a cycle: see `docs/protocol.md`.
//!
//! A torn last record (a power cut while it was written) was never synced, so none of its numbers
//! left the board: it is dropped. A damaged record with more after it is not a torn write but a
//! damaged file: the store refuses to open rather than restart numbering.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The log is compacted into one snapshot once it is this long.
pub const COMPACT_AT: u64 = 1 << 20;

const LOG: &str = "seq.log";
/// The earlier format (the whole table as JSON, rewritten each cycle), migrated on open.
const OLD: &str = "seq.json";

const SNAPSHOT: u8 = 0;
const NAMES: u8 = 1;
const ADVANCES: u8 = 2;
const ONE_EACH: u8 = 3;

pub struct SeqStore {
    dir: PathBuf,
    names: Vec<String>,
    index: HashMap<String, usize>,
    last: Vec<u64>,
    /// Devices whose numbers advanced since the last persist, by how much.
    pending: BTreeMap<usize, u64>,
    /// Devices known on disk (those after are new since the last persist).
    persisted_names: usize,
    log: fs::File,
    log_bytes: u64,
    /// Bytes appended or rewritten since opened.
    written: u64,
    compact_at: u64,
}

impl SeqStore {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let path = dir.join(LOG);
        let last = match fs::read(&path) {
            Ok(bytes) => {
                let (table, good) = replay(&bytes).with_context(|| {
                    format!(
                        "{} is damaged; refusing to restart numbering",
                        path.display()
                    )
                })?;
                if good < bytes.len() {
                    tracing::warn!(path = %path.display(), dropped_bytes = bytes.len() - good, "The last sequence record was cut short by a power cut; none of its numbers were sent.");
                }
                Some(table)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let last = match last {
            Some(t) => t,
            None => read_old(dir)?.unwrap_or_default(),
        };
        let mut store = SeqStore {
            dir: dir.to_owned(),
            names: Vec::new(),
            index: HashMap::new(),
            last: Vec::new(),
            pending: BTreeMap::new(),
            persisted_names: 0,
            log: fs::File::open(dir)?,
            log_bytes: 0,
            written: 0,
            compact_at: COMPACT_AT,
        };
        for (name, n) in last {
            store.add_name(name);
            *store.last.last_mut().expect("just added") = n;
        }
        // A fresh snapshot starts the log: it drops a torn tail and moves the old format over.
        store.compact()?;
        let _ = fs::remove_file(dir.join(OLD));
        Ok(store)
    }

    /// Every device's last number, read without changing the files (for tests and tools while
    /// the agent may run).
    pub fn read(dir: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
        match fs::read(dir.join(LOG)) {
            Ok(bytes) => Ok(replay(&bytes)?.0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(read_old(dir)?.unwrap_or_default())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the next number for `device` (the first is 1). Call [`SeqStore::persist`] before
    /// publishing anything that carries it.
    pub fn take(&mut self, device: &str) -> u64 {
        let i = match self.index.get(device) {
            Some(&i) => i,
            None => self.add_name(device.to_owned()),
        };
        self.last[i] += 1;
        *self.pending.entry(i).or_insert(0) += 1;
        self.last[i]
    }

    pub fn last(&self, device: &str) -> u64 {
        self.index.get(device).map_or(0, |&i| self.last[i])
    }

    /// Bytes written to the data directory since opened.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Appends what was taken since the last call and syncs it; nothing taken, nothing written.
    pub fn persist(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() && self.persisted_names == self.names.len() {
            return Ok(());
        }
        let mut out = Vec::new();
        if self.persisted_names < self.names.len() {
            out.extend(record(&names_body(&self.names[self.persisted_names..])));
        }
        if !self.pending.is_empty() {
            out.extend(record(&advances_body(&self.pending, self.names.len())));
        }
        self.log
            .write_all(&out)
            .and_then(|()| self.log.sync_data())
            .with_context(|| format!("cannot append to {}", self.dir.join(LOG).display()))?;
        self.written += out.len() as u64;
        self.log_bytes += out.len() as u64;
        self.pending.clear();
        self.persisted_names = self.names.len();
        if self.log_bytes >= self.compact_at {
            self.compact()?;
        }
        Ok(())
    }

    fn add_name(&mut self, name: String) -> usize {
        let i = self.names.len();
        self.index.insert(name.clone(), i);
        self.names.push(name);
        self.last.push(0);
        i
    }

    /// Rewrites the log as one snapshot: a new file, synced, renamed over the old, the
    /// directory synced.
    fn compact(&mut self) -> anyhow::Result<()> {
        let path = self.dir.join(LOG);
        let tmp = self.dir.join("seq.log.tmp");
        let snap = record(&snapshot_body(&self.names, &self.last));
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&snap)?;
        f.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
        fs::File::open(&self.dir)?.sync_all()?;
        self.log = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        self.log_bytes = snap.len() as u64;
        self.written += snap.len() as u64;
        self.pending.clear();
        self.persisted_names = self.names.len();
        Ok(())
    }
}

fn read_old(dir: &Path) -> anyhow::Result<Option<BTreeMap<String, u64>>> {
    let path = dir.join(OLD);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is corrupt; refusing to restart numbering",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn record(body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(8 + body.len());
    r.extend_from_slice(&(body.len() as u32).to_le_bytes());
    r.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    r.extend_from_slice(body);
    r
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    put_varint(out, name.len() as u64);
    out.extend_from_slice(name.as_bytes());
}

fn snapshot_body(names: &[String], last: &[u64]) -> Vec<u8> {
    let mut b = vec![SNAPSHOT];
    put_varint(&mut b, names.len() as u64);
    for (name, n) in names.iter().zip(last) {
        put_name(&mut b, name);
        put_varint(&mut b, *n);
    }
    b
}

fn names_body(names: &[String]) -> Vec<u8> {
    let mut b = vec![NAMES];
    put_varint(&mut b, names.len() as u64);
    for name in names {
        put_name(&mut b, name);
    }
    b
}

/// The devices that advanced: a bit each when every one advanced by one and that is shorter,
/// else their indexes and advances.
fn advances_body(pending: &BTreeMap<usize, u64>, devices: usize) -> Vec<u8> {
    let bits = devices.div_ceil(8);
    if pending.values().all(|&d| d == 1) && bits <= 2 * pending.len() {
        let mut b = vec![ONE_EACH];
        put_varint(&mut b, devices as u64);
        let mut map = vec![0u8; bits];
        for &i in pending.keys() {
            map[i / 8] |= 1 << (i % 8);
        }
        b.extend(map);
        return b;
    }
    let mut b = vec![ADVANCES];
    put_varint(&mut b, pending.len() as u64);
    for (&i, &d) in pending {
        put_varint(&mut b, i as u64);
        put_varint(&mut b, d);
    }
    b
}

/// A body being read: every read checks its bounds.
struct Body<'a>(&'a [u8]);

impl Body<'_> {
    fn byte(&mut self) -> anyhow::Result<u8> {
        let (&b, rest) = self.0.split_first().context("record ends early")?;
        self.0 = rest;
        Ok(b)
    }
    fn varint(&mut self) -> anyhow::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        anyhow::bail!("a number runs past 64 bits")
    }
    fn bytes(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        anyhow::ensure!(self.0.len() >= n, "record ends early");
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }
    fn name(&mut self) -> anyhow::Result<String> {
        let n = usize::try_from(self.varint()?)?;
        Ok(std::str::from_utf8(self.bytes(n)?)?.to_owned())
    }
}

/// The table the log holds, and how many of its bytes are whole records (a torn last record
/// is left out; anything else damaged is an error).
fn replay(bytes: &[u8]) -> anyhow::Result<(BTreeMap<String, u64>, usize)> {
    let mut names: Vec<String> = Vec::new();
    let mut last: Vec<u64> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let whole = rest.len() >= 8 && {
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            rest.len() - 8 >= len
        };
        if !whole {
            break; // torn: never synced
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let body = &rest[8..8 + len];
        if crc32fast::hash(body) != crc {
            anyhow::ensure!(
                at + 8 + len == bytes.len(),
                "record at byte {at} is damaged and more follows"
            );
            break; // the last record, torn
        }
        let mut b = Body(body);
        match b.byte()? {
            SNAPSHOT => {
                anyhow::ensure!(at == 0, "a snapshot after the start");
                for _ in 0..b.varint()? {
                    names.push(b.name()?);
                    last.push(b.varint()?);
                }
            }
            NAMES => {
                for _ in 0..b.varint()? {
                    names.push(b.name()?);
                    last.push(0);
                }
            }
            ADVANCES => {
                for _ in 0..b.varint()? {
                    let i = usize::try_from(b.varint()?)?;
                    let d = b.varint()?;
                    let n = last.get_mut(i).context("advance of an unknown device")?;
                    *n = n.checked_add(d).context("a number past u64")?;
                }
            }
            ONE_EACH => {
                let devices = usize::try_from(b.varint()?)?;
                anyhow::ensure!(devices <= last.len(), "bits for unknown devices");
                let map = b.bytes(devices.div_ceil(8))?;
                for (i, n) in last.iter_mut().enumerate().take(devices) {
                    if map[i / 8] & (1 << (i % 8)) != 0 {
                        *n += 1;
                    }
                }
            }
            other => anyhow::bail!("unknown record kind {other}"),
        }
        anyhow::ensure!(b.0.is_empty(), "record at byte {at} has bytes left over");
        at += 8 + len;
    }
    anyhow::ensure!(
        at > 0 || bytes.is_empty() || bytes.len() < 8,
        "no whole record"
    );
    let mut table = BTreeMap::new();
    for (name, n) in names.into_iter().zip(last) {
        anyhow::ensure!(table.insert(name, n).is_none(), "a device named twice");
    }
    Ok((table, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ems-seq-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn numbers_continue_after_reopening() {
        let dir = temp("reopen");
        let mut s = SeqStore::open(&dir).unwrap();
        assert_eq!(s.take("a"), 1);
        assert_eq!(s.take("a"), 2);
        assert_eq!(s.take("b"), 1);
        s.persist().unwrap();
        for _ in 0..10 {
            s.take("a");
            s.take("b");
            s.persist().unwrap();
        }
        let mut s = SeqStore::open(&dir).unwrap();
        assert_eq!(s.take("a"), 13);
        assert_eq!(s.last("b"), 11);
        assert_eq!(
            SeqStore::read(&dir).unwrap()["a"],
            12,
            "read sees what was persisted"
        );
        fs::write(dir.join(LOG), b"garbage that is no record at all").unwrap();
        assert!(
            SeqStore::open(&dir).is_err(),
            "a damaged store must not restart at 1"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_a_damaged_middle_refused() {
        let dir = temp("torn");
        let mut s = SeqStore::open(&dir).unwrap();
        for _ in 0..3 {
            s.take("a");
            s.take("b");
            s.persist().unwrap();
        }
        drop(s);
        let whole = fs::read(dir.join(LOG)).unwrap();
        // A power cut in the middle of the next cycle's record: those numbers never left.
        let mut torn = whole.clone();
        torn.extend(&record(&advances_body(&BTreeMap::from([(0, 1)]), 2))[..6]);
        fs::write(dir.join(LOG), &torn).unwrap();
        let mut s = SeqStore::open(&dir).unwrap();
        assert_eq!((s.last("a"), s.last("b")), (3, 3));
        assert_eq!(s.take("a"), 4);
        drop(s);
        // A flipped byte in a record with more after it is a damaged file, not a torn write.
        let mut damaged = whole.clone();
        damaged.extend(record(&advances_body(&BTreeMap::from([(0, 1)]), 2)));
        let second = 8 + u32::from_le_bytes(whole[0..4].try_into().unwrap()) as usize;
        damaged[second + 9] ^= 0x40;
        fs::write(dir.join(LOG), &damaged).unwrap();
        let err = SeqStore::open(&dir).err().expect("refused");
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_old_table_is_carried_over() {
        let dir = temp("old");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(OLD), br#"{"a":41,"b":7}"#).unwrap();
        assert_eq!(SeqStore::read(&dir).unwrap()["a"], 41);
        let mut s = SeqStore::open(&dir).unwrap();
        assert_eq!(s.take("a"), 42);
        assert_eq!(s.take("b"), 8);
        s.persist().unwrap();
        assert!(!dir.join(OLD).exists());
        assert_eq!(SeqStore::open(&dir).unwrap().last("a"), 42);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cycle_of_a_thousand_devices_appends_a_bit_each_and_compaction_keeps_every_number() {
        let dir = temp("size");
        let mut s = SeqStore::open(&dir).unwrap();
        let names: Vec<String> = (0..1000).map(|i| format!("meter-{i:04}")).collect();
        for n in &names {
            s.take(n);
        }
        s.persist().unwrap();
        let before = s.bytes_written();
        for n in &names {
            s.take(n);
        }
        s.persist().unwrap();
        // 8 header bytes, the kind, the device count (a varint) and 125 bytes of bits.
        assert_eq!(s.bytes_written() - before, 8 + 1 + 2 + 125);
        // Compacted again and again, every number stays (a small threshold: a test syncs each
        // cycle as the agent does).
        s.compact_at = 4_096;
        let cycles = 100;
        for _ in 0..cycles {
            for n in &names {
                s.take(n);
            }
            s.persist().unwrap();
        }
        assert!(fs::metadata(dir.join(LOG)).unwrap().len() < 30_000);
        let read = SeqStore::read(&dir).unwrap();
        assert!(
            read.values().all(|&n| n == cycles + 2),
            "{:?}",
            read.get("meter-0000")
        );
        // Nothing taken, nothing written.
        let quiet = s.bytes_written();
        s.persist().unwrap();
        assert_eq!(s.bytes_written(), quiet);
        fs::remove_dir_all(&dir).unwrap();
    }
}
