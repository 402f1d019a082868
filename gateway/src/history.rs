//! Settled raw history in compact, lossless blocks: one block holds one device's messages of
//! one UTC day, column by column.
//!
//! A message row costs some 40 bytes of ledger fields and 14 bytes a point (packed.rs). A day
//! of a device's messages is mostly the same numbers moving slowly: sequence numbers one apart,
//! poll times a minute apart, counters a little higher each time, the same points in the same
//! order with the same quality. Stored as columns (sequence numbers, poll times, receive times,
//! each series' values and qualities) and each column compressed with pco (Pcodec: delta
//! encoding, and for floats the detection of a decimal multiplier, so a counter of hundredths
//! costs its increments' entropy), a point costs a byte or two. Lossless: the values keep their
//! IEEE 754 bits (a column that pco's float modes would not give back exactly is stored as its
//! bits), and [`encode`] decodes what it wrote and compares it with its input before it is
//! used.
//!
//! Layout (little-endian): version (u8, 1); message count (u32); the columns seq, ts_ms and
//! received_ms (i64); the edges (u16 count, each a u16 length and its UTF-8) and, with more
//! than one, an index column (u32); the point layouts (u32 count, each a u16 entry count, or
//! `NONE` for a message whose samples retention deleted, then its series ids as u32) and the
//! messages' layout column (u32); then for each series, in id order, a flag (0: values as f64,
//! 1: as their bits in u64), its values column and its qualities column (u16: kind and code,
//! packed.rs's `RawEntry`). Each column is a u32 byte length and pco's standalone bytes.

use std::collections::BTreeMap;

use pco::standalone::{simple_compress, simple_decompress};
use pco::ChunkConfig;

use crate::packed::{push_raw, raw_entries, RawEntry};

const VERSION: u8 = 1;
/// A layout entry count that marks a message without samples (retention deleted them).
const NONE: u16 = u16::MAX;
/// pco's compression level: the lower levels compress these columns as well, faster.
const LEVEL: usize = 2;

/// One stored message: its ledger fields and its packed samples (packed.rs), none when
/// retention deleted them.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub seq: i64,
    pub ts_ms: i64,
    pub edge: String,
    pub received_ms: i64,
    pub points: Option<Vec<u8>>,
}

/// What a block holds, beside its bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSummary {
    pub first_seq: i64,
    pub last_seq: i64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    pub messages: i64,
    pub points: i64,
}

/// The UTC day a poll time falls in, ms since the epoch.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms - ts_ms.rem_euclid(86_400_000)
}

/// Encodes `messages` (one device's, at least one) into a block, and checks that the block
/// decodes to exactly them: an error, not a block, if it would not.
pub fn encode(messages: &[StoredMessage]) -> anyhow::Result<(Vec<u8>, BlockSummary)> {
    anyhow::ensure!(!messages.is_empty(), "a block holds at least one message");
    let mut out = vec![VERSION];
    out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    put(
        &mut out,
        &messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
    )?;
    put(
        &mut out,
        &messages.iter().map(|m| m.ts_ms).collect::<Vec<_>>(),
    )?;
    put(
        &mut out,
        &messages.iter().map(|m| m.received_ms).collect::<Vec<_>>(),
    )?;

    let mut edges: Vec<&str> = messages.iter().map(|m| m.edge.as_str()).collect();
    edges.sort_unstable();
    edges.dedup();
    anyhow::ensure!(edges.len() < u16::MAX as usize, "too many edges in a block");
    out.extend_from_slice(&(edges.len() as u16).to_le_bytes());
    for e in &edges {
        anyhow::ensure!(e.len() < u16::MAX as usize, "an edge name is too long");
        out.extend_from_slice(&(e.len() as u16).to_le_bytes());
        out.extend_from_slice(e.as_bytes());
    }
    if edges.len() > 1 {
        let index: Vec<u32> = messages
            .iter()
            .map(|m| edges.binary_search(&m.edge.as_str()).unwrap_or(0) as u32)
            .collect();
        put(&mut out, &index)?;
    }

    // Each message's series in order (its layout), and each series' values and qualities.
    let mut layouts: Vec<Option<Vec<u32>>> = Vec::new();
    let mut layout_of = Vec::with_capacity(messages.len());
    let mut series: BTreeMap<u32, (Vec<u64>, Vec<u16>)> = BTreeMap::new();
    let mut points = 0i64;
    for m in messages {
        let layout = match &m.points {
            None => None,
            Some(blob) => {
                let mut ids = Vec::with_capacity(crate::packed::count(blob.len()));
                for e in raw_entries(blob)? {
                    let column = series.entry(e.series).or_default();
                    column.0.push(e.bits);
                    column.1.push(e.quality);
                    ids.push(e.series);
                }
                points += ids.len() as i64;
                Some(ids)
            }
        };
        let at = match layouts.iter().position(|l| *l == layout) {
            Some(i) => i,
            None => {
                layouts.push(layout);
                layouts.len() - 1
            }
        };
        layout_of.push(at as u32);
    }
    out.extend_from_slice(&(layouts.len() as u32).to_le_bytes());
    for l in &layouts {
        match l {
            None => out.extend_from_slice(&NONE.to_le_bytes()),
            Some(ids) => {
                anyhow::ensure!(ids.len() < NONE as usize, "too many points in a message");
                out.extend_from_slice(&(ids.len() as u16).to_le_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
    }
    put(&mut out, &layout_of)?;
    for (bits, qualities) in series.values() {
        let floats: Vec<f64> = bits.iter().map(|b| f64::from_bits(*b)).collect();
        let as_floats = compress(&floats)?;
        let exact = simple_decompress::<f64>(&as_floats)
            .is_ok_and(|back| back.iter().map(|f| f.to_bits()).eq(bits.iter().copied()));
        if exact {
            out.push(0);
            put_bytes(&mut out, &as_floats);
        } else {
            out.push(1);
            put(&mut out, bits)?;
        }
        put(&mut out, qualities)?;
    }

    let summary = BlockSummary {
        first_seq: messages.iter().map(|m| m.seq).min().unwrap_or_default(),
        last_seq: messages.iter().map(|m| m.seq).max().unwrap_or_default(),
        first_ts_ms: messages.iter().map(|m| m.ts_ms).min().unwrap_or_default(),
        last_ts_ms: messages.iter().map(|m| m.ts_ms).max().unwrap_or_default(),
        messages: messages.len() as i64,
        points,
    };
    anyhow::ensure!(
        decode(&out)? == messages,
        "the block does not decode to the messages it holds"
    );
    Ok((out, summary))
}

/// The messages of a block, in the order they were encoded. A block that does not parse is an
/// error: the database was damaged.
pub fn decode(block: &[u8]) -> anyhow::Result<Vec<StoredMessage>> {
    let mut r = block;
    anyhow::ensure!(take_u8(&mut r)? == VERSION, "unknown history block version");
    let n = u32::from_le_bytes(take_n(&mut r)?) as usize;
    let seqs: Vec<i64> = take(&mut r, n)?;
    let ts: Vec<i64> = take(&mut r, n)?;
    let received: Vec<i64> = take(&mut r, n)?;
    let edge_count = u16::from_le_bytes(take_n(&mut r)?) as usize;
    let mut edges = Vec::with_capacity(edge_count);
    for _ in 0..edge_count {
        let len = u16::from_le_bytes(take_n(&mut r)?) as usize;
        let bytes = take_slice(&mut r, len)?;
        edges.push(String::from_utf8(bytes.to_vec())?);
    }
    anyhow::ensure!(!edges.is_empty(), "a block without an edge");
    let edge_of: Vec<u32> = if edges.len() > 1 {
        take(&mut r, n)?
    } else {
        vec![0; n]
    };
    let layout_count = u32::from_le_bytes(take_n(&mut r)?) as usize;
    let mut layouts: Vec<Option<Vec<u32>>> = Vec::with_capacity(layout_count.min(n));
    for _ in 0..layout_count {
        let len = u16::from_le_bytes(take_n(&mut r)?);
        if len == NONE {
            layouts.push(None);
            continue;
        }
        let mut ids = Vec::with_capacity(len as usize);
        for _ in 0..len {
            ids.push(u32::from_le_bytes(take_n(&mut r)?));
        }
        layouts.push(Some(ids));
    }
    let layout_of: Vec<u32> = take(&mut r, n)?;
    // How many entries each series has: its column's length.
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for &l in &layout_of {
        let layout = layouts
            .get(l as usize)
            .ok_or_else(|| anyhow::anyhow!("a message names layout {l} of {layout_count}"))?;
        for id in layout.iter().flatten() {
            *counts.entry(*id).or_default() += 1;
        }
    }
    let mut columns: BTreeMap<u32, (Vec<u64>, Vec<u16>, usize)> = BTreeMap::new();
    for (&id, &count) in &counts {
        let bits: Vec<u64> = match take_u8(&mut r)? {
            0 => take::<f64>(&mut r, count)?
                .into_iter()
                .map(f64::to_bits)
                .collect(),
            1 => take(&mut r, count)?,
            other => anyhow::bail!("unknown value encoding {other}"),
        };
        let qualities: Vec<u16> = take(&mut r, count)?;
        columns.insert(id, (bits, qualities, 0));
    }
    anyhow::ensure!(r.is_empty(), "{} bytes after a history block", r.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let points = match &layouts[layout_of[i] as usize] {
            None => None,
            Some(ids) => {
                let mut blob = Vec::new();
                for &id in ids {
                    let (bits, qualities, next) = columns
                        .get_mut(&id)
                        .ok_or_else(|| anyhow::anyhow!("series {id} has no column"))?;
                    push_raw(
                        &mut blob,
                        RawEntry {
                            series: id,
                            quality: qualities[*next],
                            bits: bits[*next],
                        },
                    );
                    *next += 1;
                }
                Some(blob)
            }
        };
        out.push(StoredMessage {
            seq: seqs[i],
            ts_ms: ts[i],
            edge: edges
                .get(edge_of[i] as usize)
                .ok_or_else(|| anyhow::anyhow!("a message names edge {}", edge_of[i]))?
                .clone(),
            received_ms: received[i],
            points,
        });
    }
    Ok(out)
}

fn compress<T: pco::data_types::Number>(values: &[T]) -> anyhow::Result<Vec<u8>> {
    Ok(simple_compress(
        values,
        &ChunkConfig::default().with_compression_level(LEVEL),
    )?)
}

fn put<T: pco::data_types::Number>(out: &mut Vec<u8>, values: &[T]) -> anyhow::Result<()> {
    put_bytes(out, &compress(values)?);
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The next column, which must hold `n` values.
fn take<T: pco::data_types::Number>(r: &mut &[u8], n: usize) -> anyhow::Result<Vec<T>> {
    let len = u32::from_le_bytes(take_n(r)?) as usize;
    let values: Vec<T> = simple_decompress(take_slice(r, len)?)?;
    anyhow::ensure!(
        values.len() == n,
        "a column of {} values where {n} were due",
        values.len()
    );
    Ok(values)
}

fn take_slice<'a>(r: &mut &'a [u8], len: usize) -> anyhow::Result<&'a [u8]> {
    anyhow::ensure!(r.len() >= len, "a history block ends early");
    let (head, rest) = r.split_at(len);
    *r = rest;
    Ok(head)
}

fn take_n<const N: usize>(r: &mut &[u8]) -> anyhow::Result<[u8; N]> {
    Ok(take_slice(r, N)?.try_into()?)
}

fn take_u8(r: &mut &[u8]) -> anyhow::Result<u8> {
    Ok(take_n::<1>(r)?[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ems_core::Quality;

    /// A day of one-minute polls of a meter with a counter of hundredths, a power reading and
    /// a point that sometimes fails, from two edges; some messages' samples pruned.
    fn day() -> Vec<StoredMessage> {
        let mut raw = 2_358_000u64;
        (0..1440i64)
            .map(|i| {
                raw += 170 + (i as u64 * 7919) % 13;
                let mut blob = Vec::new();
                crate::packed::push(&mut blob, 3, Some(raw as f64 * 0.01), Quality::Good);
                crate::packed::push(&mut blob, 4, Some(1.0 / (i + 3) as f64), Quality::Good);
                if i % 97 == 0 {
                    crate::packed::push(&mut blob, 5, None, Quality::Exception(2));
                } else {
                    crate::packed::push(&mut blob, 5, Some(-0.0), Quality::Good);
                }
                StoredMessage {
                    seq: 1000 + i + i / 500,
                    ts_ms: 1_767_196_800_000 + i * 60_000 + (i * 31) % 50,
                    edge: if i < 700 { "edge-1" } else { "edge-2" }.into(),
                    received_ms: 1_767_196_800_300 + i * 60_000 + (i * 17) % 400,
                    points: (i % 400 != 5).then_some(blob),
                }
            })
            .collect()
    }

    #[test]
    fn a_block_gives_back_every_message_bit_for_bit_in_a_few_bytes_a_point() {
        let day = day();
        let (block, summary) = encode(&day).unwrap();
        assert_eq!(decode(&block).unwrap(), day);
        assert_eq!(
            (summary.messages, summary.first_seq, summary.last_seq),
            (1440, 1000, 1000 + 1439 + 2)
        );
        assert_eq!(summary.points, 3 * (1440 - 4));
        let rows: usize = day
            .iter()
            .map(|m| 40 + m.points.as_ref().map_or(0, Vec::len))
            .sum();
        let per_point = block.len() as f64 / summary.points as f64;
        assert!(
            per_point < 4.0,
            "{} bytes for {} points ({per_point:.2} a point; rows about {rows})",
            block.len(),
            summary.points
        );
    }

    proptest::proptest! {
        /// Any messages, whatever their values' bits (NaN payloads, infinities, negative
        /// zero), qualities, layouts, edges and numbers, come back exactly.
        #[test]
        fn any_messages_come_back_bit_for_bit(
            messages in proptest::collection::vec(
                (
                    any_i64(),
                    any_i64(),
                    0u8..3,
                    any_i64(),
                    proptest::option::of(proptest::collection::vec(
                        (0u32..4, 0u8..6, proptest::num::u8::ANY, proptest::num::u64::ANY, proptest::bool::ANY),
                        0..5,
                    )),
                ),
                1..60,
            )
        ) {
            let messages: Vec<StoredMessage> = messages
                .into_iter()
                .map(|(seq, ts_ms, edge, received_ms, points)| StoredMessage {
                    seq,
                    ts_ms,
                    edge: format!("edge-{edge}"),
                    received_ms,
                    points: points.map(|entries| {
                        let mut blob = Vec::new();
                        for (series, kind, code, bits, none) in entries {
                            blob.extend_from_slice(&series.to_le_bytes());
                            blob.push(kind | if none { 0x80 } else { 0 });
                            blob.push(code);
                            blob.extend_from_slice(&bits.to_le_bytes());
                        }
                        blob
                    }),
                })
                .collect();
            let (block, summary) = encode(&messages).unwrap();
            proptest::prop_assert_eq!(decode(&block).unwrap(), messages.clone());
            proptest::prop_assert_eq!(summary.messages, messages.len() as i64);
        }
    }

    fn any_i64() -> impl proptest::strategy::Strategy<Value = i64> {
        proptest::prop_oneof![proptest::num::i64::ANY, 0i64..1_000_000]
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let (block, _) = encode(&day()).unwrap();
        for cut in [0, 1, 5, block.len() / 2, block.len() - 1] {
            assert!(decode(&block[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = block.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        assert!(encode(&[]).is_err());
    }
}
