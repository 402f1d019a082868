//! The raw samples of one message, packed into one BLOB of the `messages` row.
//!
//! One row per message instead of one per point is a tenth of the B-tree inserts, which keeps
//! ingest at its rate as the database grows. Values are stored as their IEEE 754 bits, so what
//! is read back is exactly what the edge sent.
//!
//! Each point is 14 bytes: the `series` id (u32, little-endian), the quality kind (u8; bit 7
//! set when the point has no value), the Modbus exception code (u8, 0 unless the kind is
//! exception) and the value (f64 bits, little-endian; zero when there is none).

use ems_core::Quality;

const ENTRY: usize = 14;
const NO_VALUE: u8 = 0x80;

/// One stored point of a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackedPoint {
    pub series: i64,
    pub value: Option<f64>,
    pub quality: Quality,
}

fn kind(q: Quality) -> (u8, u8) {
    match q {
        Quality::Good => (0, 0),
        Quality::Timeout => (1, 0),
        Quality::Exception(code) => (2, code),
        Quality::Comm => (3, 0),
        Quality::Crc => (4, 0),
        Quality::Decode => (5, 0),
    }
}

fn quality(kind: u8, code: u8) -> Option<Quality> {
    Some(match kind {
        0 => Quality::Good,
        1 => Quality::Timeout,
        2 => Quality::Exception(code),
        3 => Quality::Comm,
        4 => Quality::Crc,
        5 => Quality::Decode,
        _ => return None,
    })
}

/// Appends one point to a message's BLOB.
pub fn push(blob: &mut Vec<u8>, series: i64, value: Option<f64>, q: Quality) {
    let series = u32::try_from(series).expect("series ids stay below 2^32");
    let (mut k, code) = kind(q);
    if value.is_none() {
        k |= NO_VALUE;
    }
    blob.extend_from_slice(&series.to_le_bytes());
    blob.push(k);
    blob.push(code);
    blob.extend_from_slice(&value.unwrap_or(0.0).to_bits().to_le_bytes());
}

/// The points of a message's BLOB, in the order they were pushed. A BLOB that is not a whole
/// number of entries, or holds an unknown quality kind, is an error: the database was damaged.
pub fn unpack(blob: &[u8]) -> anyhow::Result<Vec<PackedPoint>> {
    anyhow::ensure!(
        blob.len().is_multiple_of(ENTRY),
        "packed samples of {} bytes are not whole {ENTRY}-byte entries",
        blob.len()
    );
    blob.chunks_exact(ENTRY)
        .map(|e| {
            let series = u32::from_le_bytes(e[0..4].try_into().expect("4 bytes")) as i64;
            let q = quality(e[4] & !NO_VALUE, e[5]).ok_or_else(|| {
                anyhow::anyhow!("unknown quality kind {} in packed samples", e[4])
            })?;
            let bits = u64::from_le_bytes(e[6..14].try_into().expect("8 bytes"));
            let value = (e[4] & NO_VALUE == 0).then(|| f64::from_bits(bits));
            Ok(PackedPoint {
                series,
                value,
                quality: q,
            })
        })
        .collect()
}

/// The value of one series in a message's BLOB, if that point is there, good and has a value.
pub fn good_value(blob: &[u8], series: i64) -> anyhow::Result<Option<f64>> {
    Ok(unpack(blob)?
        .into_iter()
        .find(|p| p.series == series)
        .filter(|p| p.quality.is_good())
        .and_then(|p| p.value))
}

/// One entry exactly as stored, field by field: what a compacted history block keeps column by
/// column (history.rs), without reading the quality or the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEntry {
    pub series: u32,
    /// The quality kind byte (bit 7 set: no value) above the exception code byte.
    pub quality: u16,
    /// The value's bits (zero when there is none).
    pub bits: u64,
}

/// The entries of a BLOB as stored; a BLOB that is not whole entries is an error.
pub fn raw_entries(blob: &[u8]) -> anyhow::Result<impl Iterator<Item = RawEntry> + '_> {
    anyhow::ensure!(
        blob.len().is_multiple_of(ENTRY),
        "packed samples of {} bytes are not whole {ENTRY}-byte entries",
        blob.len()
    );
    Ok(blob.chunks_exact(ENTRY).map(|e| RawEntry {
        series: u32::from_le_bytes(e[0..4].try_into().expect("4 bytes")),
        quality: u16::from_be_bytes([e[4], e[5]]),
        bits: u64::from_le_bytes(e[6..14].try_into().expect("8 bytes")),
    }))
}

/// Appends one entry as [`raw_entries`] gave it.
pub fn push_raw(blob: &mut Vec<u8>, e: RawEntry) {
    blob.extend_from_slice(&e.series.to_le_bytes());
    blob.extend_from_slice(&e.quality.to_be_bytes());
    blob.extend_from_slice(&e.bits.to_le_bytes());
}

/// How many points a BLOB holds, without decoding it.
pub fn count(blob_len: usize) -> usize {
    blob_len / ENTRY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_quality_and_exact_value_comes_back() {
        let points = [
            (1, Some(0.1 + 0.2), Quality::Good),
            (2, Some(-0.0), Quality::Good),
            (3, Some(f64::MIN_POSITIVE / 2.0), Quality::Good),
            (4, Some(1.797_693_134_862_315_7e308), Quality::Good),
            (70_000, None, Quality::Timeout),
            (5, None, Quality::Exception(0x0B)),
            (6, Some(12.5), Quality::Exception(2)),
            (7, None, Quality::Comm),
            (8, None, Quality::Crc),
            (u32::MAX as i64, None, Quality::Decode),
        ];
        let mut blob = Vec::new();
        for (s, v, q) in points {
            push(&mut blob, s, v, q);
        }
        assert_eq!(count(blob.len()), points.len());
        let back = unpack(&blob).unwrap();
        for ((s, v, q), p) in points.iter().zip(&back) {
            assert_eq!((p.series, p.quality), (*s, *q));
            assert_eq!(p.value.map(f64::to_bits), v.map(f64::to_bits));
        }
    }

    #[test]
    fn a_damaged_blob_is_an_error_not_a_guess() {
        let mut blob = Vec::new();
        push(&mut blob, 1, Some(1.0), Quality::Good);
        assert!(unpack(&blob[..13]).is_err());
        blob[4] = 9;
        assert!(unpack(&blob)
            .unwrap_err()
            .to_string()
            .contains("quality kind 9"));
        assert!(unpack(&[]).unwrap().is_empty());
    }
}
