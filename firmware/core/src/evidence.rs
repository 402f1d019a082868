//! Protocol v1.2's evidence: each message signed by its edge and chained to the device's previous
//! one, so that a verifier with the edge's public key can tell that the stored readings are the
//! ones the edge read, none altered, and which messages follow which.
//!
//! What is signed is not the JSON (its spelling may change on the way and in storage) but the
//! message's *canonical bytes* (docs/protocol.md, "Evidence"):
//!
//! ```text
//! "ems/v1.2 telemetry\0"
//! site, edge, device                      each: u32 length (big-endian), UTF-8 bytes
//! seq u64, ts_ms i64                      big-endian
//! point count u32, then each point in byte order of its id:
//!     id, quality as on the wire (text)   each: u32 length, UTF-8 bytes
//!     has value u8 (0 or 1), value f64 IEEE 754 bits big-endian (0 without a value)
//! prev: 32 bytes                          the previous message's digest; zeros: the chain starts
//! ```
//!
//! The message's digest is SHA-256 of those bytes (so it covers `prev`: a chain), and its
//! signature is Ed25519 (RFC 8032) over them.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::wire::{Signed, Telemetry};
use crate::Quality;

/// The digest that starts a chain: the device has no previous message to name.
pub const CHAIN_START: [u8; 32] = [0; 32];

const TAG: &[u8] = b"ems/v1.2 telemetry\0";

/// One point as it is signed: (id, value, quality).
pub type SignedPoint<'a> = (&'a str, Option<f64>, Quality);

/// What the canonical bytes are made of; built from a message or from what a store kept.
#[derive(Debug, Clone)]
pub struct Content<'a> {
    pub site: &'a str,
    pub edge: &'a str,
    pub device: &'a str,
    pub seq: u64,
    pub ts_ms: i64,
    pub points: Vec<SignedPoint<'a>>,
}

impl<'a> Content<'a> {
    pub fn of(t: &'a Telemetry) -> Content<'a> {
        Content {
            site: &t.site,
            edge: &t.edge,
            device: &t.device,
            seq: t.seq,
            ts_ms: t.ts_ms,
            points: t.points.iter().map(|p| (p.id.as_str(), p.v, p.q)).collect(),
        }
    }

    /// The canonical bytes with `prev` as the previous message's digest.
    pub fn canonical(&self, prev: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.points.len() * 32);
        out.extend_from_slice(TAG);
        for s in [self.site, self.edge, self.device] {
            text(&mut out, s);
        }
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts_ms.to_be_bytes());
        let mut points: Vec<&SignedPoint<'_>> = self.points.iter().collect();
        points.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        out.extend_from_slice(&(points.len() as u32).to_be_bytes());
        for (id, v, q) in points {
            text(&mut out, id);
            text(&mut out, &q.to_string());
            out.push(u8::from(v.is_some()));
            out.extend_from_slice(&v.unwrap_or(0.0).to_bits().to_be_bytes());
        }
        out.extend_from_slice(prev);
        out
    }

    /// SHA-256 of the canonical bytes: what the next message names as its `prev`.
    pub fn digest(&self, prev: &[u8; 32]) -> [u8; 32] {
        Sha256::digest(self.canonical(prev)).into()
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An edge's signing key (its 32-byte Ed25519 seed).
pub struct EdgeKey(SigningKey);

impl EdgeKey {
    pub fn from_seed(seed: [u8; 32]) -> EdgeKey {
        EdgeKey(SigningKey::from_bytes(&seed))
    }

    /// The public key a gateway enrols, as hex.
    pub fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }

    /// Signs any bytes (a gateway's report); the signature as hex.
    pub fn sign_bytes(&self, bytes: &[u8]) -> String {
        hex(&self.0.sign(bytes).to_bytes())
    }

    /// Signs `t` as the next message of its device's chain, whose previous digest is `prev`;
    /// returns this message's digest (the next one's `prev`).
    pub fn sign(&self, t: &mut Telemetry, prev: [u8; 32]) -> [u8; 32] {
        let bytes = Content::of(t).canonical(&prev);
        let sig = self.0.sign(&bytes);
        t.signed = Some(Signed {
            prev: hex(&prev),
            sig: hex(&sig.to_bytes()),
        });
        Sha256::digest(&bytes).into()
    }
}

/// An enrolled edge's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From 64 hexadecimal digits.
    pub fn from_hex(s: &str) -> Result<PublicKey, &'static str> {
        let bytes: [u8; 32] = unhex(s).ok_or("a public key is 64 hexadecimal digits")?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| "not a valid Ed25519 public key")
    }

    pub fn to_hex(&self) -> String {
        hex(self.0.as_bytes())
    }

    /// Whether `sig` (hex) is this key's signature of `bytes`.
    pub fn verifies(&self, bytes: &[u8], sig: &str) -> bool {
        unhex::<64>(sig).is_some_and(|s| self.verifies_raw(bytes, &s))
    }

    /// Whether `sig` (its 64 bytes) is this key's signature of `bytes`.
    pub fn verifies_raw(&self, bytes: &[u8], sig: &[u8]) -> bool {
        <[u8; 64]>::try_from(sig)
            .is_ok_and(|s| self.0.verify(bytes, &Signature::from_bytes(&s)).is_ok())
    }
}

/// Messages to verify: each one's canonical bytes, signature and the key it must verify with.
#[cfg(feature = "batch")]
pub type ToVerify<'a> = (&'a [u8], Signature, &'a PublicKey);

/// Signatures verified together, at most this many at a time: a batch of 128 costs about half
/// of verifying each alone, and a batch with a bad signature in it is verified again one by one.
#[cfg(feature = "batch")]
const BATCH: usize = 128;

/// Which of `messages` verify, in their order. Good signatures are verified a batch at a time
/// (one multiscalar multiplication for all: RFC 8032's equation with random weights); a batch
/// that fails is verified one by one, to tell its good messages from its bad.
///
/// A batch takes every set of signatures that each verify alone (the same cofactorless
/// equation as [`PublicKey::verifies`]). Only the holder of a key could make a signature that a
/// batch takes and a lone check does not (a residue of small order), and the stored message's
/// signature is checked alone again by `ems-gateway verify`.
#[cfg(feature = "batch")]
pub fn verify_each(messages: &[ToVerify<'_>]) -> Vec<bool> {
    let mut verified = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(BATCH) {
        let bytes: Vec<&[u8]> = chunk.iter().map(|m| m.0).collect();
        let sigs: Vec<Signature> = chunk.iter().map(|m| m.1).collect();
        let keys: Vec<VerifyingKey> = chunk.iter().map(|m| m.2 .0).collect();
        if chunk.len() > 1 && ed25519_dalek::verify_batch(&bytes, &sigs, &keys).is_ok() {
            verified.extend(core::iter::repeat_n(true, chunk.len()));
        } else {
            verified.extend(chunk.iter().map(|m| m.2 .0.verify(m.0, &m.1).is_ok()));
        }
    }
    verified
}

/// Why a message's evidence does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `prev` or `sig` is not hexadecimal of the right length.
    Malformed,
    /// The signature does not verify with the edge's key over the content.
    BadSignature,
}

/// Checks `content` signed with `signed` by `key`; on success, the message's digest and the
/// `prev` it names.
pub fn verify(
    content: &Content<'_>,
    signed: &Signed,
    key: &PublicKey,
) -> Result<([u8; 32], [u8; 32]), Refusal> {
    let (prev, sig) = parse(signed).ok_or(Refusal::Malformed)?;
    let bytes = content.canonical(&prev);
    key.0
        .verify(&bytes, &sig)
        .map_err(|_| Refusal::BadSignature)?;
    Ok((Sha256::digest(&bytes).into(), prev))
}

/// The `prev` digest and signature of a message's evidence, if well formed.
pub fn parse(signed: &Signed) -> Option<([u8; 32], Signature)> {
    let prev: [u8; 32] = unhex(&signed.prev)?;
    let sig: [u8; 64] = unhex(&signed.sig)?;
    Some((prev, Signature::from_bytes(&sig)))
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Exactly `N` bytes from `2 N` hexadecimal digits (either case).
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PointValue;

    fn message(seq: u64, value: f64) -> Telemetry {
        Telemetry {
            v: 1,
            site: "s".into(),
            edge: "e".into(),
            device: "m1".into(),
            seq,
            ts_ms: 1_700_000_000_000 + seq as i64 * 60_000,
            points: vec![
                PointValue {
                    id: "kwh".into(),
                    v: Some(value),
                    q: Quality::Good,
                },
                PointValue {
                    id: "a".into(),
                    v: None,
                    q: Quality::Exception(2),
                },
            ],
            signed: None,
        }
    }

    #[test]
    fn a_signed_message_verifies_and_any_change_to_it_does_not() {
        let key = EdgeKey::from_seed([7; 32]);
        let public = PublicKey::from_hex(&key.public_hex()).unwrap();
        let mut t = message(1, 12.5);
        let digest = key.sign(&mut t, CHAIN_START);
        let signed = t.signed.clone().unwrap();
        assert_eq!(
            verify(&Content::of(&t), &signed, &public),
            Ok((digest, CHAIN_START))
        );
        // The value's last bit, the poll time, a quality, the site, the chain link: each breaks it.
        let mut changed = Vec::new();
        let mut c = t.clone();
        c.points[0].v = Some(f64::from_bits(12.5f64.to_bits() + 1));
        changed.push(c);
        let mut c = t.clone();
        c.ts_ms += 1;
        changed.push(c);
        let mut c = t.clone();
        c.points[1].q = Quality::Exception(3);
        changed.push(c);
        let mut c = t.clone();
        c.site = "s2".into();
        changed.push(c);
        for c in &changed {
            assert_eq!(
                verify(&Content::of(c), &signed, &public),
                Err(Refusal::BadSignature)
            );
        }
        let mut other_prev = signed.clone();
        other_prev.prev = hex(&[1; 32]);
        assert_eq!(
            verify(&Content::of(&t), &other_prev, &public),
            Err(Refusal::BadSignature)
        );
        // Another edge's key does not verify it.
        let other = PublicKey::from_hex(&EdgeKey::from_seed([8; 32]).public_hex()).unwrap();
        assert_eq!(
            verify(&Content::of(&t), &signed, &other),
            Err(Refusal::BadSignature)
        );
        let mut short = signed;
        short.sig.pop();
        assert_eq!(
            verify(&Content::of(&t), &short, &public),
            Err(Refusal::Malformed)
        );
    }

    #[cfg(feature = "batch")]
    #[test]
    fn a_batch_verifies_its_good_signatures_and_finds_each_bad_one() {
        let key = EdgeKey::from_seed([7; 32]);
        let public = PublicKey::from_hex(&key.public_hex()).unwrap();
        let other = PublicKey::from_hex(&EdgeKey::from_seed([8; 32]).public_hex()).unwrap();
        // 300 messages: two full batches and a part one.
        let mut prev = CHAIN_START;
        let mut signed = Vec::new();
        for seq in 1..=300 {
            let mut t = message(seq, seq as f64);
            let next = key.sign(&mut t, prev);
            let (p, sig) = parse(t.signed.as_ref().unwrap()).unwrap();
            signed.push((Content::of(&t).canonical(&p), sig));
            prev = next;
        }
        let all = |keys: &[&PublicKey], signed: &[(Vec<u8>, Signature)]| {
            let messages: Vec<ToVerify<'_>> = signed
                .iter()
                .zip(keys)
                .map(|((b, s), k)| (b.as_slice(), *s, *k))
                .collect();
            verify_each(&messages)
        };
        let mut keys = vec![&public; 300];
        assert_eq!(all(&keys, &signed), vec![true; 300]);
        // A reading altered in the second batch, another key named in the third, and a lone
        // message: each is found, and only it.
        signed[150].0[60] ^= 1;
        keys[290] = &other;
        let got = all(&keys, &signed);
        let bad: Vec<usize> = (0..300).filter(|&i| !got[i]).collect();
        assert_eq!(bad, vec![150, 290]);
        assert_eq!(all(&keys[150..151], &signed[150..151]), vec![false]);
        assert_eq!(all(&keys[..1], &signed[..1]), vec![true]);
        assert!(all(&[], &[]).is_empty());
    }

    #[test]
    fn the_canonical_bytes_do_not_depend_on_point_order_and_chain_by_digest() {
        let key = EdgeKey::from_seed([7; 32]);
        let mut a = message(1, 1.0);
        let mut b = a.clone();
        b.points.reverse();
        assert_eq!(
            Content::of(&a).canonical(&CHAIN_START),
            Content::of(&b).canonical(&CHAIN_START)
        );
        let d1 = key.sign(&mut a, CHAIN_START);
        let mut next = message(2, 2.0);
        key.sign(&mut next, d1);
        assert_eq!(next.signed.unwrap().prev, hex(&d1));
        assert_eq!(d1, Content::of(&a).digest(&CHAIN_START));
    }

    #[test]
    fn hex_goes_both_ways_and_refuses_what_is_not_hex() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex::<4>("0001ABff"), Some(bytes));
        assert_eq!(unhex::<4>("0001abf"), None);
        assert_eq!(unhex::<4>("0001abfg"), None);
        assert!(PublicKey::from_hex("zz").is_err());
    }
}
