//! Binary-coded decimal as the Chinese meter protocols carry it (DL/T 645, CJ/T 188): two
//! digits a byte, the lowest byte first on the wire; a meter's address is its nameplate number
//! in the same code.

use core::fmt;

/// A value's format as the standard prints it: `XXXXXX.XX` is four bytes of BCD, two of its
/// eight digits after the point. A signed value carries its sign in the top bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub bytes: u8,
    pub decimals: u8,
    pub signed: bool,
}

impl Format {
    /// `"XXXXXX.XX"` or `"XX.XXXX"`: an even number of X in all, at most one point.
    pub fn parse(text: &str, signed: bool) -> Option<Format> {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let ok = |s: &str| s.bytes().all(|b| b == b'X');
        let digits = int.len() + frac.len();
        (ok(int) && ok(frac) && digits > 0 && digits % 2 == 0 && digits <= 16).then_some(Format {
            bytes: (digits / 2) as u8,
            decimals: frac.len() as u8,
            signed,
        })
    }
}

/// Why value bytes do not make a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcdError {
    /// Fewer bytes than the format has.
    Short,
    /// A nibble above 9.
    NotBcd,
}

/// The number in the first `fmt.bytes` of `value` (lowest byte first, as on the wire).
pub fn decode(value: &[u8], fmt: Format) -> Result<f64, BcdError> {
    let bytes = value.get(..usize::from(fmt.bytes)).ok_or(BcdError::Short)?;
    let mut n: u64 = 0;
    let mut negative = false;
    for (i, &b) in bytes.iter().rev().enumerate() {
        let b = if i == 0 && fmt.signed {
            negative = b & 0x80 != 0;
            b & 0x7F
        } else {
            b
        };
        let (hi, lo) = (b >> 4, b & 0x0F);
        if hi > 9 || lo > 9 {
            return Err(BcdError::NotBcd);
        }
        n = n * 100 + u64::from(hi) * 10 + u64::from(lo);
    }
    // No `powi` without std: the scale is an exact power of ten anyway.
    let scale = (0..fmt.decimals).fold(1u64, |s, _| s * 10);
    let v = n as f64 / scale as f64;
    Ok(if negative { -v } else { v })
}

/// A meter's address: its nameplate number, `2 * N` decimal digits, BCD on the wire (DL/T 645's
/// 12 digits, CJ/T 188's 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address<const N: usize>(pub [u8; N]);

impl<const N: usize> Address<N> {
    /// Every meter on the line answers (only with one meter on it).
    pub const BROADCAST: Address<N> = Address([0xAA; N]);

    /// `"000012345678"`: exactly `2 * N` digits, the most significant first as printed.
    pub fn parse(text: &str) -> Option<Address<N>> {
        parse_address(text).map(Address)
    }
}

impl<const N: usize> fmt::Display for Address<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_address(&self.0, f)
    }
}

/// A meter's address of `N` bytes: its `2 * N` digits, most significant first as printed
/// (`"000012345678"`), as the wire carries them (the lowest pair first).
pub fn parse_address<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut wire = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        wire[N - 1 - i] = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
    }
    Some(wire)
}

/// An address as printed: the most significant pair first.
pub fn fmt_address(wire: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in wire.iter().rev() {
        write!(f, "{:02x}", b)?;
    }
    Ok(())
}

/// The sum of `bytes` modulo 256: the checksum of both protocols' frames.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_their_signs() {
        let f = |t, s| Format::parse(t, s).unwrap();
        // Phase A voltage XXX.X: 230.1 V is 01 23 on the wire (lowest byte first).
        assert_eq!(decode(&[0x01, 0x23], f("XXX.X", false)), Ok(230.1));
        // Active power XX.XXXX, signed: -1.2345 kW is 45 23 81.
        assert_eq!(decode(&[0x45, 0x23, 0x81], f("XX.XXXX", true)), Ok(-1.2345));
        // Power factor X.XXX: 0.987 is 87 09.
        assert_eq!(decode(&[0x87, 0x09], f("X.XXX", true)), Ok(0.987));
        assert_eq!(
            decode(&[0x1A, 0x23], f("XXX.X", false)),
            Err(BcdError::NotBcd)
        );
        assert_eq!(decode(&[0x01], f("XXX.X", false)), Err(BcdError::Short));
        assert!(Format::parse("XXX", false).is_none() && Format::parse("XX.X.X", false).is_none());
    }

    #[test]
    fn addresses_go_lowest_pair_first() {
        let a: [u8; 7] = parse_address("00201510270588").unwrap();
        assert_eq!(a, [0x88, 0x05, 0x27, 0x10, 0x15, 0x20, 0x00]);
        assert!(parse_address::<6>("00201510270588").is_none());
        assert!(parse_address::<6>("0020151027058x").is_none());
    }
}
