//! The disk spool: every poll result is appended here before it is published, and leaves only
//! when the broker has acknowledged it.
//!
//! Append-only segment files `{first id:020}.seg` of records `[length u32][crc32 u32][body]`
//! (little endian), the body being `[topic length u16][topic][payload]`. Records are numbered
//! from 1 across segments. `acked` holds the highest number below which everything was
//! acknowledged (written atomically from time to time; a crash replays a few acknowledged
//! messages again, which the gateway drops by sequence number).
//!
//! Crash safety: data is fsynced at most `fsync_ms` after it was appended, so a power cut loses
//! at most that window. At open a torn record at the end of a segment is cut off and a record
//! whose checksum fails is skipped; both are counted and logged, never read as data.
//!
//! Bounded: when the spool passes `max_bytes` the oldest segment is deleted, delivered or not;
//! the records lost that way are counted, logged as errors and reported in the edge's status.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;

/// Largest record body accepted; anything claiming more is corruption.
const MAX_BODY: u32 = 16 * 1024 * 1024;
const HEADER: u64 = 8;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The most disk the spool may take; past it the oldest segment is dropped.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// A segment is closed and a new one begun past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Appended data reaches the disk (fsync) at most this long after it was written: what a
    /// power cut can lose.
    #[serde(default = "default_fsync_ms")]
    pub fsync_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: default_max_bytes(),
            segment_bytes: default_segment_bytes(),
            fsync_ms: default_fsync_ms(),
        }
    }
}

fn default_max_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_segment_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_fsync_ms() -> u64 {
    1_000
}

/// One spooled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    first_id: u64,
    /// Records in it (good ones and skipped corrupt ones: numbering counts both).
    count: u64,
    bytes: u64,
    path: PathBuf,
}

impl Segment {
    fn end_id(&self) -> u64 {
        self.first_id + self.count
    }
}

/// What opening found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Records waiting for delivery.
    pub pending: u64,
    /// Bytes of torn records cut off the end of segments.
    pub torn_bytes: u64,
    /// Records skipped because their checksum failed.
    pub corrupt: u64,
}

pub struct Spool {
    dir: PathBuf,
    cfg: SpoolConfig,
    segments: Vec<Segment>,
    /// The active (last) segment, open for appending.
    writer: Option<File>,
    unsynced: bool,
    last_sync: Instant,
    /// Every id below this is acknowledged (or dropped).
    acked_below: u64,
    /// Acknowledged ids at or above `acked_below`, waiting for the gap below them to close.
    acked_ahead: std::collections::BTreeSet<u64>,
    acked_written: u64,
    /// Next id `read_next` returns, and where it is.
    read_id: u64,
    reader: Option<(usize, BufReader<File>)>,
    /// Records lost to the size bound since open.
    pub dropped: u64,
    /// Ids of records skipped as corrupt at open (never returned).
    corrupt: std::collections::BTreeSet<u64>,
}

fn read_record(r: &mut impl Read) -> std::io::Result<Option<(u32, Vec<u8>)>> {
    let mut header = [0u8; HEADER as usize];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > MAX_BODY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "record length out of range",
        ));
    }
    let mut body = vec![0u8; len as usize];
    match r.read_exact(&mut body) {
        Ok(()) => Ok(Some((crc, body))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn encode(topic: &str, payload: &[u8]) -> Vec<u8> {
    let topic = topic.as_bytes();
    let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
    body.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(payload);
    let mut rec = Vec::with_capacity(HEADER as usize + body.len());
    rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

fn decode(body: &[u8]) -> Option<(String, Vec<u8>)> {
    let n = u16::from_le_bytes(body.get(0..2)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(body.get(2..2 + n)?).ok()?.to_owned();
    Some((topic, body[2 + n..].to_vec()))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, checking every segment.
    pub fn open(dir: &Path, cfg: SpoolConfig) -> anyhow::Result<(Spool, OpenReport)> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create spool directory {}", dir.display()))?;
        let acked_below = match fs::read_to_string(dir.join("acked")) {
            Ok(t) => t
                .trim()
                .parse()
                .with_context(|| format!("{} is corrupt", dir.join("acked").display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e).context("cannot read the spool's acked file"),
        };
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let first = p
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()?;
                Some((first, p))
            })
            .collect();
        names.sort();
        let mut report = OpenReport::default();
        let mut segments = Vec::new();
        let mut corrupt = std::collections::BTreeSet::new();
        for (first_id, path) in names {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            let mut r = BufReader::new(&file);
            let (mut count, mut good_end) = (0u64, 0u64);
            // A read error or a short record ends the good part of the segment.
            while let Ok(Some((crc, body))) = read_record(&mut r) {
                if crc32fast::hash(&body) != crc {
                    corrupt.insert(first_id + count);
                    report.corrupt += 1;
                }
                count += 1;
                good_end += HEADER + body.len() as u64;
            }
            drop(r);
            if good_end < size {
                // A record cut short by a crash (or a length that cannot be): cut it off.
                report.torn_bytes += size - good_end;
                file.set_len(good_end)?;
                file.sync_all()?;
            }
            segments.push(Segment {
                first_id,
                count,
                bytes: good_end,
                path,
            });
        }
        let next_id = segments.last().map_or(acked_below, |s| s.end_id());
        let acked_below = acked_below
            .min(next_id)
            .max(segments.first().map_or(1, |s| s.first_id));
        let mut spool = Spool {
            dir: dir.to_owned(),
            cfg,
            segments,
            writer: None,
            unsynced: false,
            last_sync: Instant::now(),
            acked_below,
            acked_ahead: Default::default(),
            acked_written: acked_below,
            read_id: acked_below,
            reader: None,
            dropped: 0,
            corrupt,
        };
        // Damaged records at or below the acknowledgement mark count for nothing (the fuzzer
        // found a spool whose only record was acknowledged and then damaged: its depth went
        // below zero); at the mark, the mark moves over them.
        spool.advance_acked_to(acked_below);
        spool.read_id = spool.acked_below;
        spool.remove_delivered_segments()?;
        report.pending = spool.depth();
        if report.torn_bytes > 0 || report.corrupt > 0 {
            tracing::error!(
                torn_bytes = report.torn_bytes,
                corrupt_records = report.corrupt,
                "Spool damaged (power cut or disk fault): the damaged records are skipped."
            );
        }
        Ok((spool, report))
    }

    /// The id the next appended record gets: every record below it was appended already.
    pub fn next_id(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.acked_below, |s| s.end_id())
    }

    /// Records not yet acknowledged.
    pub fn depth(&self) -> u64 {
        self.next_id()
            - self.acked_below
            - self.acked_ahead.len() as u64
            - self.corrupt.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends one message; returns its id. Syncs when the fsync window has passed.
    pub fn append(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<u64> {
        let rec = encode(topic, payload);
        let id = self.next_id();
        let roll = self
            .segments
            .last()
            .is_none_or(|s| s.bytes + rec.len() as u64 > self.cfg.segment_bytes && s.count > 0);
        if roll {
            self.sync()?;
            let path = self.dir.join(format!("{id:020}.seg"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            // The new file's name must survive a power cut too.
            File::open(&self.dir)?.sync_all()?;
            self.segments.push(Segment {
                first_id: id,
                count: 0,
                bytes: 0,
                path,
            });
            self.writer = Some(file);
        }
        if self.writer.is_none() {
            let path = &self.segments.last().expect("a segment").path;
            self.writer = Some(OpenOptions::new().append(true).open(path)?);
        }
        self.writer
            .as_mut()
            .expect("writer open")
            .write_all(&rec)
            .context("cannot append to the spool")?;
        let seg = self.segments.last_mut().expect("a segment");
        seg.count += 1;
        seg.bytes += rec.len() as u64;
        self.unsynced = true;
        self.enforce_bound()?;
        self.sync_if_due()?;
        Ok(id)
    }

    /// Syncs if the fsync window has passed since the last sync.
    pub fn sync_if_due(&mut self) -> anyhow::Result<()> {
        if self.unsynced && self.last_sync.elapsed() >= Duration::from_millis(self.cfg.fsync_ms) {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> anyhow::Result<()> {
        if self.unsynced {
            if let Some(w) = &self.writer {
                w.sync_data().context("cannot sync the spool")?;
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        self.write_acked()?;
        Ok(())
    }

    /// Past the size bound: drop the oldest segments (never the one being written).
    fn enforce_bound(&mut self) -> anyhow::Result<()> {
        while self.bytes() > self.cfg.max_bytes && self.segments.len() > 1 {
            let seg = self.segments.remove(0);
            let undelivered = (seg.first_id.max(self.acked_below)..seg.end_id())
                .filter(|id| !self.acked_ahead.contains(id) && !self.corrupt.contains(id))
                .count() as u64;
            fs::remove_file(&seg.path)
                .with_context(|| format!("cannot remove {}", seg.path.display()))?;
            self.dropped += undelivered;
            if undelivered > 0 {
                tracing::error!(
                    lost = undelivered,
                    total_lost = self.dropped,
                    max_bytes = self.cfg.max_bytes,
                    "Spool full: dropped the oldest undelivered messages."
                );
            }
            self.advance_acked_to(self.acked_below.max(seg.end_id()));
            if self.read_id < seg.end_id() {
                self.read_id = seg.end_id();
            }
            self.reader = None;
        }
        Ok(())
    }

    /// Everything below `below` is delivered (or dropped); then the mark moves on over records
    /// acknowledged out of order and over corrupt ones, which never come back for one.
    fn advance_acked_to(&mut self, below: u64) {
        self.acked_below = below;
        self.acked_ahead = self.acked_ahead.split_off(&below);
        self.corrupt = self.corrupt.split_off(&below);
        while self.acked_below < self.next_id()
            && (self.acked_ahead.remove(&self.acked_below)
                || self.corrupt.remove(&self.acked_below))
        {
            self.acked_below += 1;
        }
    }

    /// Up to `max` records after the last one returned, in order.
    pub fn read_next(&mut self, max: usize) -> anyhow::Result<Vec<Record>> {
        let mut out = Vec::new();
        while out.len() < max && self.read_id < self.next_id() {
            let Some(seg_idx) = self
                .segments
                .iter()
                .position(|s| s.first_id <= self.read_id && self.read_id < s.end_id())
            else {
                break;
            };
            if self.reader.as_ref().is_none_or(|(i, _)| *i != seg_idx) {
                let seg = &self.segments[seg_idx];
                let mut r = BufReader::new(File::open(&seg.path)?);
                for _ in seg.first_id..self.read_id {
                    read_record(&mut r)?.context("spool segment shorter than its index")?;
                }
                self.reader = Some((seg_idx, r));
            }
            let (_, r) = self.reader.as_mut().expect("reader open");
            let (_, body) = read_record(r)?.context("spool segment shorter than its index")?;
            let id = self.read_id;
            self.read_id += 1;
            // Skipped: corrupt records, and records released out of order (read again after
            // a rewind).
            if self.corrupt.contains(&id) || self.acked_ahead.contains(&id) {
                continue;
            }
            match decode(&body) {
                Some((topic, payload)) => out.push(Record { id, topic, payload }),
                None => {
                    tracing::error!(
                        id,
                        "Spool record with a good checksum but no topic; skipped."
                    );
                    self.ack(id)?;
                }
            }
        }
        Ok(out)
    }

    /// Reads again from the oldest record not yet released: what was handed out and not
    /// released is sent again (after a reconnect, when the gateway has not confirmed it).
    pub fn rewind(&mut self) {
        self.read_id = self.acked_below;
        self.reader = None;
    }

    /// The directory it lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record `id` is delivered (the broker's PUBACK, or the gateway's commit under protocol
    /// v1.1): it is released.
    pub fn ack(&mut self, id: u64) -> anyhow::Result<()> {
        if id < self.acked_below {
            return Ok(());
        }
        self.acked_ahead.insert(id);
        self.advance_acked_to(self.acked_below);
        self.remove_delivered_segments()
    }

    /// Deletes segments whose every record is acknowledged (keeping the one being written).
    fn remove_delivered_segments(&mut self) -> anyhow::Result<()> {
        while self.segments.len() > 1 && self.segments[0].end_id() <= self.acked_below {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path)
                .with_context(|| format!("cannot remove {}", seg.path.display()))?;
            self.reader = None;
        }
        Ok(())
    }

    /// Writes the acknowledgement mark (atomically) if it moved.
    fn write_acked(&mut self) -> anyhow::Result<()> {
        if self.acked_below == self.acked_written {
            return Ok(());
        }
        let tmp = self.dir.join("acked.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(self.acked_below.to_string().as_bytes())?;
        f.sync_data()?;
        fs::rename(&tmp, self.dir.join("acked"))?;
        self.acked_written = self.acked_below;
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "Could not sync the spool on close.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ems-spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn small() -> SpoolConfig {
        SpoolConfig {
            max_bytes: 1 << 20,
            segment_bytes: 200,
            fsync_ms: 0,
        }
    }

    fn ids(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.id).collect()
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_restarts() {
        let d = dir("order");
        {
            let (mut s, report) = Spool::open(&d, small()).unwrap();
            assert_eq!(report, OpenReport::default());
            for i in 1..=20u64 {
                assert_eq!(s.append("t/x", format!("msg {i}").as_bytes()).unwrap(), i);
            }
            assert!(s.segments.len() >= 2, "rolled over segments");
            let first = s.read_next(5).unwrap();
            assert_eq!(ids(&first), vec![1, 2, 3, 4, 5]);
            assert_eq!(first[2].topic, "t/x");
            assert_eq!(first[2].payload, b"msg 3");
            // Acknowledged out of order: 1, 2, 4. Only below 3 counts as delivered.
            for id in [1, 2, 4] {
                s.ack(id).unwrap();
            }
            assert_eq!(s.depth(), 17);
        }
        // Reopened (as after a crash): everything from 3 on comes back, 4 included (at least
        // once; the gateway drops the duplicate by sequence number).
        let (mut s, report) = Spool::open(&d, small()).unwrap();
        assert_eq!(report.pending, 18);
        let all = s.read_next(100).unwrap();
        assert_eq!(ids(&all), (3..=20).collect::<Vec<_>>());
        for r in &all {
            s.ack(r.id).unwrap();
        }
        assert_eq!(s.depth(), 0);
        assert_eq!(s.segments.len(), 1, "delivered segments are deleted");
        assert_eq!(s.append("t/x", b"next").unwrap(), 21, "ids never repeat");
    }

    #[test]
    fn a_record_damaged_after_its_acknowledgement_counts_for_nothing() {
        let d = dir("acked-damaged");
        let seg;
        {
            let (mut s, _) = Spool::open(&d, small()).unwrap();
            s.append("t/x", b"msg 1").unwrap();
            let r = s.read_next(1).unwrap();
            s.ack(r[0].id).unwrap();
            s.sync().unwrap();
            seg = s.segments[0].path.clone();
        }
        overwrite(&seg, HEADER + 3, b"X");
        let (mut s, report) = Spool::open(&d, small()).unwrap();
        assert_eq!((report.corrupt, report.pending, s.depth()), (1, 0, 0));
        assert!(s.read_next(10).unwrap().is_empty());
        assert_eq!(s.append("t/x", b"msg 2").unwrap(), 2, "ids never repeat");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_a_corrupt_record_skipped() {
        let d = dir("torn");
        let seg;
        {
            let (mut s, _) = Spool::open(
                &d,
                SpoolConfig {
                    segment_bytes: 1 << 20,
                    ..small()
                },
            )
            .unwrap();
            for i in 1..=5u64 {
                s.append("t/x", format!("msg {i}").as_bytes()).unwrap();
            }
            seg = s.segments[0].path.clone();
        }
        let len = fs::metadata(&seg).unwrap().len();
        let rec = len / 5;
        // A byte flipped inside record 2's body, and half a record 6 written when power failed.
        overwrite(&seg, rec + HEADER + 4, b"X");
        let half = &encode("t/x", b"msg 6")[..10];
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(half).unwrap();
        drop(f);
        let (mut s, report) = Spool::open(&d, small()).unwrap();
        assert_eq!(report.torn_bytes, 10);
        assert_eq!(report.corrupt, 1);
        let back = s.read_next(10).unwrap();
        assert_eq!(ids(&back), vec![1, 3, 4, 5]);
        assert_eq!(back[1].payload, b"msg 3");
        for r in &back {
            s.ack(r.id).unwrap();
        }
        assert_eq!(
            s.depth(),
            0,
            "the corrupt record does not wait for an acknowledgement"
        );
        assert_eq!(s.append("t/x", b"msg 6").unwrap(), 6);
    }

    #[test]
    fn past_its_bound_the_spool_drops_the_oldest_and_counts_them() {
        let d = dir("bound");
        let cfg = SpoolConfig {
            max_bytes: 600,
            segment_bytes: 200,
            fsync_ms: 0,
        };
        let (mut s, _) = Spool::open(&d, cfg).unwrap();
        for i in 1..=40u64 {
            s.append("t/x", format!("message number {i:03}").as_bytes())
                .unwrap();
        }
        assert!(s.bytes() <= 600, "{}", s.bytes());
        assert!(s.dropped > 0);
        let back = s.read_next(100).unwrap();
        assert_eq!(back.last().unwrap().id, 40, "the newest are kept");
        assert_eq!(
            back.len() as u64 + s.dropped,
            40,
            "every record is either kept or counted as dropped"
        );
        let first = back[0].id;
        assert_eq!(
            ids(&back),
            (first..=40).collect::<Vec<_>>(),
            "in order, no holes"
        );
    }
}
