//! Register values to engineering numbers: data types, word and byte orders, scaling.

use core::fmt;
use serde::{Deserialize, Serialize};

/// How the registers of one point are to be read as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DataType {
    /// Number of 16-bit registers the value occupies.
    pub const fn registers(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// The value after which an unsigned counter of this type wraps to zero, if it is an integer.
    pub fn wrap_value(self) -> Option<f64> {
        match self {
            DataType::U16 => Some(65_536.0),
            DataType::U32 => Some(4_294_967_296.0),
            DataType::U64 => Some(18_446_744_073_709_551_616.0),
            _ => None,
        }
    }
}

/// Order of bytes in a multi-register value, named by where the most significant byte `A` lands.
///
/// `ABCD` is Modbus' own big-endian order (high word first). `CDAB` swaps words (low word
/// first, common on Schneider and many Chinese meters), `BADC` swaps bytes inside each word, and
/// `DCBA` is fully little-endian. For 64-bit values the same rule extends to four words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WordOrder {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

impl WordOrder {
    fn word_swap(self) -> bool {
        matches!(self, WordOrder::CDAB | WordOrder::DCBA)
    }
    fn byte_swap(self) -> bool {
        matches!(self, WordOrder::BADC | WordOrder::DCBA)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer registers than the data type needs.
    Short { needed: u16, got: usize },
    /// A float register pattern that is NaN or infinite: no meter reading means that.
    NotFinite,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short { needed, got } => {
                write!(f, "needs {needed} registers, got {got}")
            }
            DecodeError::NotFinite => write!(f, "float is NaN or infinite"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Decodes the registers of one point into its raw number (before scale and offset).
pub fn decode(regs: &[u16], ty: DataType, order: WordOrder) -> Result<f64, DecodeError> {
    let n = ty.registers() as usize;
    if regs.len() < n {
        return Err(DecodeError::Short {
            needed: ty.registers(),
            got: regs.len(),
        });
    }
    // Assemble a big-endian integer from the words in most-significant-first order.
    let mut bits: u64 = 0;
    for i in 0..n {
        let idx = if order.word_swap() { n - 1 - i } else { i };
        let mut w = regs[idx];
        if order.byte_swap() {
            w = w.swap_bytes();
        }
        bits = (bits << 16) | u64::from(w);
    }
    let v = match ty {
        DataType::U16 | DataType::U32 | DataType::U64 => bits as f64,
        DataType::I16 => f64::from(bits as u16 as i16),
        DataType::I32 => f64::from(bits as u32 as i32),
        DataType::I64 => bits as i64 as f64,
        DataType::F32 => f64::from(f32::from_bits(bits as u32)),
        DataType::F64 => f64::from_bits(bits),
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(DecodeError::NotFinite)
    }
}

/// Encodes a raw number into registers; the inverse of [`decode`], used by simulators and tests.
pub fn encode(value: f64, ty: DataType, order: WordOrder, out: &mut [u16]) {
    let n = ty.registers() as usize;
    let bits: u64 = match ty {
        DataType::U16 | DataType::U32 | DataType::U64 => value as u64,
        DataType::I16 => value as i16 as u16 as u64,
        DataType::I32 => value as i32 as u32 as u64,
        DataType::I64 => value as i64 as u64,
        DataType::F32 => u64::from((value as f32).to_bits()),
        DataType::F64 => value.to_bits(),
    };
    for i in 0..n {
        let shift = 16 * (n - 1 - i);
        let mut w = (bits >> shift) as u16;
        if order.byte_swap() {
            w = w.swap_bytes();
        }
        let idx = if order.word_swap() { n - 1 - i } else { i };
        out[idx] = w;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_worked_example_of_docs_profiles_md() {
        // 230.5 V as f32 is 0x4366_8000; each order puts those bytes in the registers so.
        for (order, regs) in [
            (WordOrder::ABCD, [0x4366, 0x8000]),
            (WordOrder::CDAB, [0x8000, 0x4366]),
            (WordOrder::BADC, [0x6643, 0x0080]),
            (WordOrder::DCBA, [0x0080, 0x6643]),
        ] {
            assert_eq!(decode(&regs, DataType::F32, order), Ok(230.5), "{order:?}");
        }
        // Read with the wrong order, the same registers are a number no meter shows.
        let wrong = decode(&[0x8000, 0x4366], DataType::F32, WordOrder::ABCD).unwrap();
        assert!(wrong.abs() < 1e-30, "{wrong}");
    }

    use super::*;

    #[test]
    fn u32_in_all_four_orders() {
        // 0x1234_5678 as it appears on the wire in each order.
        let cases = [
            (WordOrder::ABCD, [0x1234, 0x5678]),
            (WordOrder::CDAB, [0x5678, 0x1234]),
            (WordOrder::BADC, [0x3412, 0x7856]),
            (WordOrder::DCBA, [0x7856, 0x3412]),
        ];
        for (order, regs) in cases {
            assert_eq!(
                decode(&regs, DataType::U32, order),
                Ok(305_419_896.0),
                "{order:?}"
            );
        }
    }

    #[test]
    fn f32_word_swapped_as_many_meters_send_it() {
        // 230.5 V = 0x4366_8000; a CDAB meter sends the low word first.
        assert_eq!(
            decode(&[0x8000, 0x4366], DataType::F32, WordOrder::CDAB),
            Ok(230.5)
        );
    }

    #[test]
    fn signed_values_keep_their_sign() {
        assert_eq!(decode(&[0xFFFF], DataType::I16, WordOrder::ABCD), Ok(-1.0));
        assert_eq!(
            decode(&[0xFFFF, 0xFFFE], DataType::I32, WordOrder::ABCD),
            Ok(-2.0)
        );
        let regs = [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD];
        assert_eq!(decode(&regs, DataType::I64, WordOrder::ABCD), Ok(-3.0));
    }

    #[test]
    fn u64_counter_in_every_order_round_trips() {
        for order in [
            WordOrder::ABCD,
            WordOrder::CDAB,
            WordOrder::BADC,
            WordOrder::DCBA,
        ] {
            let mut regs = [0u16; 4];
            encode(123_456_789_012.0, DataType::U64, order, &mut regs);
            assert_eq!(
                decode(&regs, DataType::U64, order),
                Ok(123_456_789_012.0),
                "{order:?}"
            );
        }
    }

    #[test]
    fn too_few_registers_and_nan_are_errors_not_numbers() {
        assert_eq!(
            decode(&[1], DataType::U32, WordOrder::ABCD),
            Err(DecodeError::Short { needed: 2, got: 1 })
        );
        assert_eq!(
            decode(&[0x7FC0, 0x0000], DataType::F32, WordOrder::ABCD),
            Err(DecodeError::NotFinite)
        );
    }
}
