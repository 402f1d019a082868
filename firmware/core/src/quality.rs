//! Quality of one sampled value: the device's answer kept apart from the wire's failure.

use core::fmt;
use core::str::FromStr;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Why a value is (or is not) to be trusted. On the wire it is a short string (see docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// Read and decoded.
    Good,
    /// The device did not answer in time.
    Timeout,
    /// The device answered with a Modbus exception (function-specific code, e.g. 2, 4, 6, 0x0B).
    Exception(u8),
    /// The link failed (connection refused or dropped, I/O error).
    Comm,
    /// A frame arrived but was corrupt (bad CRC, truncated).
    Crc,
    /// Registers arrived but did not make a valid number (NaN, wrong length).
    Decode,
}

impl Quality {
    pub fn is_good(self) -> bool {
        self == Quality::Good
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quality::Good => f.write_str("good"),
            Quality::Timeout => f.write_str("timeout"),
            Quality::Exception(code) => write!(f, "exception:{code:02x}"),
            Quality::Comm => f.write_str("comm"),
            Quality::Crc => f.write_str("crc"),
            Quality::Decode => f.write_str("decode"),
        }
    }
}

impl FromStr for Quality {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "good" => Quality::Good,
            "timeout" => Quality::Timeout,
            "comm" => Quality::Comm,
            "crc" => Quality::Crc,
            "decode" => Quality::Decode,
            _ => {
                let code = s.strip_prefix("exception:").ok_or("unknown quality code")?;
                let code = u8::from_str_radix(code, 16).map_err(|_| "bad exception code")?;
                Quality::Exception(code)
            }
        })
    }
}

impl Serialize for Quality {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quality {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Quality;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quality code such as \"good\" or \"exception:02\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quality, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_text() {
        for q in [
            Quality::Good,
            Quality::Timeout,
            Quality::Exception(2),
            Quality::Exception(0x0B),
            Quality::Comm,
            Quality::Crc,
            Quality::Decode,
        ] {
            let text = std::format!("{q}");
            assert_eq!(text.parse::<Quality>(), Ok(q), "{text}");
        }
        assert_eq!(std::format!("{}", Quality::Exception(0x0B)), "exception:0b");
        assert!("fine".parse::<Quality>().is_err());
    }
}
