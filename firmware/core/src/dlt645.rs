//! DL/T 645 (多功能电能表通信协议), the master's side: the read request, the checks of a meter's
//! reply, and the BCD data formats. Both editions: DL/T 645-2007 (four-byte data identifiers,
//! read 0x11, reply 0x91, error reply 0xD1) and DL/T 645-1997 (two-byte identifiers, 0x01,
//! 0x81, 0xC1).
//!
//! A frame is `68 A0..A5 68 C L DATA CS 16`: the meter's 12-digit address in BCD, lowest two
//! digits first; every data byte sent with 0x33 added; CS the sum of every byte from the first
//! 68 to the end of the data, modulo 256. Requests are preceded by `FE FE FE FE`, which wakes a
//! meter's receiver; replies may carry it too and it is skipped.

use core::fmt;

use crate::bcd::{self, checksum};

const START: u8 = 0x68;
const END: u8 = 0x16;
/// Added to each data byte on the wire.
const OFFSET: u8 = 0x33;
/// Sent before each request.
pub const PREAMBLE: [u8; 4] = [0xFE; 4];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Edition {
    #[serde(rename = "dlt645-2007")]
    V2007,
    #[serde(rename = "dlt645-1997")]
    V1997,
}

impl Edition {
    const fn read_code(self) -> u8 {
        match self {
            Edition::V2007 => 0x11,
            Edition::V1997 => 0x01,
        }
    }

    /// Bytes of a data identifier.
    pub const fn di_len(self) -> usize {
        match self {
            Edition::V2007 => 4,
            Edition::V1997 => 2,
        }
    }
}

/// A meter's address: 12 decimal digits (its nameplate number), BCD on the wire.
pub type Address = bcd::Address<6>;

/// The frame (preamble included) that asks the meter at `addr` for data identifier `di`
/// (written as the standard prints it: `0x00010000` is DI3 DI2 DI1 DI0 = 00 01 00 00).
#[cfg(feature = "alloc")]
pub fn read_request(edition: Edition, addr: &Address, di: u32) -> alloc::vec::Vec<u8> {
    let mut f = alloc::vec::Vec::with_capacity(4 + 12 + 4);
    f.extend_from_slice(&PREAMBLE);
    f.push(START);
    f.extend_from_slice(&addr.0);
    f.push(START);
    f.push(edition.read_code());
    let n = edition.di_len();
    f.push(n as u8);
    f.extend(di.to_le_bytes()[..n].iter().map(|b| b.wrapping_add(OFFSET)));
    let cs = checksum(&f[PREAMBLE.len()..]);
    f.push(cs);
    f.push(END);
    f
}

/// Bytes on the line for one read of a value `value_bytes` long: the request and the reply,
/// each with its four-byte preamble (meters usually send one before their reply too) around
/// 68, address, 68, control, length, identifier, checksum and 16. At 11 bits a character, the
/// least time a read can take.
pub fn read_exchange_bytes(edition: Edition, value_bytes: usize) -> usize {
    2 * (PREAMBLE.len() + 12 + edition.di_len()) + value_bytes
}

/// Where the first whole frame in what has arrived lies, past any preamble or noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed; those before `from` can never start a frame and may go.
    NeedMore {
        from: usize,
    },
    Frame {
        start: usize,
        end: usize,
    },
}

/// Finds the first frame in `buf`: a start byte, six address bytes, a second start byte, the
/// control code and the length, then that much data, the checksum and the end byte.
pub fn find_frame(buf: &[u8]) -> Scan {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == START) {
        let start = i + off;
        match buf.get(start + 7) {
            None => return Scan::NeedMore { from: start },
            Some(&START) => {}
            Some(_) => {
                i = start + 1;
                continue;
            }
        }
        let Some(&len) = buf.get(start + 9) else {
            return Scan::NeedMore { from: start };
        };
        let end = start + 12 + usize::from(len);
        return if buf.len() >= end {
            Scan::Frame { start, end }
        } else {
            Scan::NeedMore { from: start }
        };
    }
    Scan::NeedMore { from: buf.len() }
}

/// What a sound reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The value bytes that follow the data identifier, 0x33 taken off.
    #[cfg(feature = "alloc")]
    Data(alloc::vec::Vec<u8>),
    /// The meter could not answer: its error byte (bit 1 set: no such data).
    Error(u8),
}

/// The error byte's bit for "no data under this identifier".
pub const NO_SUCH_DATA: u8 = 0x02;

/// Why a frame is not the reply asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The checksum or the end byte is wrong: noise on the line.
    Checksum,
    /// A sound frame from another meter, or of another request.
    Mismatch,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::Checksum => "the frame's checksum or end byte is wrong",
            FrameError::Mismatch => "a frame from another meter or of another request",
        })
    }
}

/// Checks `frame` (as [`find_frame`] found it) as the reply of the meter at `addr` to a read of
/// `di`.
#[cfg(feature = "alloc")]
pub fn parse_reply(
    edition: Edition,
    addr: &Address,
    di: u32,
    frame: &[u8],
) -> Result<Reply, FrameError> {
    if frame.len() < 12 || frame[frame.len() - 1] != END {
        return Err(FrameError::Checksum);
    }
    let (body, tail) = frame.split_at(frame.len() - 2);
    if checksum(body) != tail[0] {
        return Err(FrameError::Checksum);
    }
    if body[1..7] != addr.0 {
        return Err(FrameError::Mismatch);
    }
    let control = body[8];
    let data: alloc::vec::Vec<u8> = body[10..].iter().map(|b| b.wrapping_sub(OFFSET)).collect();
    let read = edition.read_code();
    // Bit 7: a reply; bit 6: an error reply; bit 5 (2007): more data follows, which a read of
    // one identifier does not need.
    if control & 0x1F != read || control & 0x80 == 0 {
        return Err(FrameError::Mismatch);
    }
    if control & 0x40 != 0 {
        return data
            .first()
            .map(|&e| Reply::Error(e))
            .ok_or(FrameError::Mismatch);
    }
    let n = edition.di_len();
    if data.len() < n || data[..n] != di.to_le_bytes()[..n] {
        return Err(FrameError::Mismatch);
    }
    Ok(Reply::Data(data[n..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_exchange_is_its_request_twice_and_the_value() {
        let addr = Address::parse("000000000043").unwrap();
        for edition in [Edition::V2007, Edition::V1997] {
            let request = read_request(edition, &addr, 0x0001_0000).len();
            assert_eq!(read_exchange_bytes(edition, 4), 2 * request + 4);
        }
        assert_eq!(read_exchange_bytes(Edition::V2007, 4), 44);
    }

    #[test]
    fn a_read_request_is_framed_as_meters_expect() {
        // The read every DL/T 645-2007 meter answers, broadcast: forward active total energy
        // (00 01 00 00, sent DI0 first with 33 added: 33 33 34 33), checksum AE.
        let f = read_request(Edition::V2007, &Address::BROADCAST, 0x0001_0000);
        assert_eq!(
            f,
            [
                0xFE, 0xFE, 0xFE, 0xFE, 0x68, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0x68, 0x11, 0x04,
                0x33, 0x33, 0x34, 0x33, 0xAE, 0x16
            ]
        );
        // Meter 123456789012: its address lowest digits first (12 90 78 56 34 12); checksum
        // 68+12+90+78+56+34+12+68+11+04+33+33+34+33 (hex) = 0x368 -> 68.
        let addr = Address::parse("123456789012").unwrap();
        assert_eq!(addr.to_string(), "123456789012");
        let f = read_request(Edition::V2007, &addr, 0x0001_0000);
        assert_eq!(&f[4..12], [0x68, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x68]);
        assert_eq!(&f[18..], [0x68, 0x16]);
        // 1997: 9010, read code 01, two identifier bytes (10 90, with 33: 43 C3); checksum
        // 0x286 + 01 + 02 + 43 + C3 = 0x38F -> 8F.
        let f = read_request(Edition::V1997, &addr, 0x9010);
        assert_eq!(&f[12..], [0x01, 0x02, 0x43, 0xC3, 0x8F, 0x16]);
        assert!(
            Address::parse("12345678901").is_none() && Address::parse("12345678901x").is_none()
        );
    }

    /// A meter's reply as bytes: preamble, header, data with 0x33 added, checksum, end.
    fn reply(addr: &Address, control: u8, data: &[u8]) -> alloc::vec::Vec<u8> {
        let mut f = alloc::vec![0xFE, 0xFE, START];
        f.extend_from_slice(&addr.0);
        f.extend_from_slice(&[START, control, data.len() as u8]);
        f.extend(data.iter().map(|b| b.wrapping_add(OFFSET)));
        let cs = checksum(&f[2..]);
        f.extend_from_slice(&[cs, END]);
        f
    }

    #[test]
    fn a_reply_is_found_checked_and_its_value_decoded() {
        let addr = Address::parse("000000001234").unwrap();
        // 00 01 00 00 then 12345.67 kWh as XXXXXX.XX: 67 45 23 01.
        let bytes = reply(
            &addr,
            0x91,
            &[0x00, 0x00, 0x01, 0x00, 0x67, 0x45, 0x23, 0x01],
        );
        for cut in 0..bytes.len() {
            assert!(
                matches!(find_frame(&bytes[..cut]), Scan::NeedMore { .. }),
                "{cut}"
            );
        }
        let Scan::Frame { start, end } = find_frame(&bytes) else {
            panic!()
        };
        assert_eq!((start, end), (2, bytes.len()));
        let Ok(Reply::Data(value)) =
            parse_reply(Edition::V2007, &addr, 0x0001_0000, &bytes[start..end])
        else {
            panic!()
        };
        let energy = bcd::Format::parse("XXXXXX.XX", false).unwrap();
        assert_eq!(bcd::decode(&value, energy), Ok(12_345.67));
        // Noise, another meter, an error reply.
        let mut noisy = bytes.clone();
        noisy[14] ^= 1;
        assert_eq!(
            parse_reply(Edition::V2007, &addr, 0x0001_0000, &noisy[2..]),
            Err(FrameError::Checksum)
        );
        let other = Address::parse("000000005678").unwrap();
        assert_eq!(
            parse_reply(Edition::V2007, &other, 0x0001_0000, &bytes[2..]),
            Err(FrameError::Mismatch)
        );
        let refused = reply(&addr, 0xD1, &[NO_SUCH_DATA]);
        assert_eq!(
            parse_reply(Edition::V2007, &addr, 0x0201_0100, &refused[2..]),
            Ok(Reply::Error(NO_SUCH_DATA))
        );
    }
}
