//! CJ/T 188 (户用计量仪表数据传输技术条件: water, heat and gas meters), the master's side: the
//! read request, the checks of a meter's reply, and the units its values are given in.
//!
//! A frame is `68 T A0..A6 C L DATA CS 16`: the meter type T (10H cold water, 20H heat, 30H
//! gas ...), the meter's 14-digit address in BCD, lowest two digits first; the control code
//! (01H read, 81H its reply, C1H a reply that reports an abnormal state); the data: a two-byte
//! data identifier as the standard prints it (90H 1FH for "current metering data"), a serial
//! number SER that the reply echoes, then the values; CS the sum of every byte from 68 to the
//! end of the data, modulo 256. Requests are preceded by `FE FE`, which wakes a meter's
//! receiver; replies may carry it too and it is skipped. Unlike DL/T 645, no 0x33 is added.
//!
//! A value is BCD, lowest byte first (see [`crate::bcd`]); a cumulative value is followed by a
//! unit code byte (2CH m3, 05H kWh, 11H GJ ...), which the meter may set as it is configured:
//! the reader converts what it gets to the unit it wants, or refuses it, never guesses.

use crate::bcd::{self, checksum};
pub use crate::dlt645::{FrameError, Scan};

const START: u8 = 0x68;
const END: u8 = 0x16;
const READ: u8 = 0x01;
/// Sent before each request.
pub const PREAMBLE: [u8; 2] = [0xFE; 2];
/// The read every meter answers: current metering data (cumulative values, time, status).
pub const READ_DATA: u16 = 0x901F;

/// A meter's address: 14 decimal digits (its nameplate number), BCD on the wire.
pub type Address = bcd::Address<7>;

/// The frame (preamble included) that asks meter `addr` of type `meter_type` for data
/// identifier `di` (as printed: `0x901F`), numbered `ser`.
#[cfg(feature = "alloc")]
pub fn read_request(meter_type: u8, addr: &Address, di: u16, ser: u8) -> alloc::vec::Vec<u8> {
    let mut f = alloc::vec::Vec::with_capacity(PREAMBLE.len() + 16);
    f.extend_from_slice(&PREAMBLE);
    f.extend_from_slice(&[START, meter_type]);
    f.extend_from_slice(&addr.0);
    f.extend_from_slice(&[READ, 3]);
    f.extend_from_slice(&di.to_be_bytes());
    f.push(ser);
    let cs = checksum(&f[PREAMBLE.len()..]);
    f.extend_from_slice(&[cs, END]);
    f
}

/// Bytes on the line for one read whose reply carries `value_bytes` after the identifier and
/// SER: the request and the reply, each with its preamble. At 11 bits a character, the least
/// time a read can take.
pub fn read_exchange_bytes(value_bytes: usize) -> usize {
    2 * (PREAMBLE.len() + 16) + value_bytes
}

/// Finds the first reply frame in `buf`: a start byte, the type, seven address bytes, a
/// control code with its reply bit set, the length, then that much data, the checksum and the
/// end byte. The frame has no second start byte, as DL/T 645's has, to tell noise from a frame:
/// the reply bit passes over half of what noise starts.
pub fn find_frame(buf: &[u8]) -> Scan {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == START) {
        let start = i + off;
        let (Some(&control), Some(&len)) = (buf.get(start + 9), buf.get(start + 10)) else {
            return Scan::NeedMore { from: start };
        };
        if control & 0x80 == 0 {
            i = start + 1;
            continue;
        }
        let end = start + 13 + usize::from(len);
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
    /// The bytes that follow the data identifier and SER.
    #[cfg(feature = "alloc")]
    Data(alloc::vec::Vec<u8>),
    /// The meter reports an abnormal state instead: its status byte (0 if it sent none).
    Error(u8),
}

/// Checks `frame` (as [`find_frame`] found it) as the reply of meter `addr` of type
/// `meter_type` to the read of `di` numbered `ser`. A sound frame of another meter, type,
/// identifier or number (a late reply to an earlier request) is a [`FrameError::Mismatch`].
#[cfg(feature = "alloc")]
pub fn parse_reply(
    meter_type: u8,
    addr: &Address,
    di: u16,
    ser: u8,
    frame: &[u8],
) -> Result<Reply, FrameError> {
    if frame.len() < 13 || frame[frame.len() - 1] != END {
        return Err(FrameError::Checksum);
    }
    let (body, tail) = frame.split_at(frame.len() - 2);
    if checksum(body) != tail[0] {
        return Err(FrameError::Checksum);
    }
    if body[1] != meter_type || (body[2..9] != addr.0 && *addr != Address::BROADCAST) {
        return Err(FrameError::Mismatch);
    }
    let control = body[9];
    let data = &body[11..];
    // Bit 7: a reply; bit 6: an abnormal one.
    if control & 0x3F != READ || control & 0x80 == 0 {
        return Err(FrameError::Mismatch);
    }
    if data.len() < 3 || data[..2] != di.to_be_bytes() || data[2] != ser {
        // An abnormal reply may carry its status alone.
        if control & 0x40 != 0 && data.len() < 3 {
            return Ok(Reply::Error(data.first().copied().unwrap_or(0)));
        }
        return Err(FrameError::Mismatch);
    }
    if control & 0x40 != 0 {
        return Ok(Reply::Error(data.get(3).copied().unwrap_or(0)));
    }
    Ok(Reply::Data(data[3..].to_vec()))
}

/// What a unit measures: values convert only within one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Energy,
    Power,
    Volume,
    VolumeFlow,
}

/// A unit of the standard's unit code table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit {
    pub code: u8,
    pub name: &'static str,
    pub kind: Kind,
    /// The unit in J, W, m3 or m3/h.
    pub size: f64,
}

/// The unit codes of CJ/T 188-2004 (its table of 单位代号), as printed in secondary sources
/// (public implementations), not checked against the licensed standard.
pub const UNITS: [Unit; 16] = [
    unit(0x01, "J", Kind::Energy, 1.0),
    unit(0x02, "Wh", Kind::Energy, 3.6e3),
    unit(0x05, "kWh", Kind::Energy, 3.6e6),
    unit(0x08, "MWh", Kind::Energy, 3.6e9),
    unit(0x0A, "MWh*100", Kind::Energy, 3.6e11),
    unit(0x0B, "kJ", Kind::Energy, 1e3),
    unit(0x0E, "MJ", Kind::Energy, 1e6),
    unit(0x11, "GJ", Kind::Energy, 1e9),
    unit(0x13, "GJ*100", Kind::Energy, 1e11),
    unit(0x14, "W", Kind::Power, 1.0),
    unit(0x17, "kW", Kind::Power, 1e3),
    unit(0x1A, "MW", Kind::Power, 1e6),
    unit(0x29, "L", Kind::Volume, 1e-3),
    unit(0x2C, "m3", Kind::Volume, 1.0),
    unit(0x32, "L/h", Kind::VolumeFlow, 1e-3),
    unit(0x35, "m3/h", Kind::VolumeFlow, 1.0),
];

const fn unit(code: u8, name: &'static str, kind: Kind, size: f64) -> Unit {
    Unit {
        code,
        name,
        kind,
        size,
    }
}

impl Unit {
    pub fn of_code(code: u8) -> Option<Unit> {
        UNITS.iter().copied().find(|u| u.code == code)
    }

    pub fn named(name: &str) -> Option<Unit> {
        UNITS.iter().copied().find(|u| u.name == name)
    }
}

/// `value` given in `from` as a number of `to`: unchanged when the meter uses the unit asked
/// for, converted within one kind, `None` across kinds.
pub fn convert(value: f64, from: Unit, to: Unit) -> Option<f64> {
    if from.code == to.code {
        Some(value)
    } else if from.kind == to.kind {
        Some(value * from.size / to.size)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_request_is_framed_as_meters_expect() {
        // The "universal read" of installers' tools: cold-water type, broadcast address,
        // 901F, SER 01; checksum D2.
        let f = read_request(0x10, &Address::BROADCAST, READ_DATA, 0x01);
        assert_eq!(
            f,
            [
                0xFE, 0xFE, 0x68, 0x10, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0x01, 0x03, 0x90,
                0x1F, 0x01, 0xD2, 0x16
            ]
        );
        assert_eq!(read_exchange_bytes(19), 2 * f.len() + 19);
        let addr = Address::parse("00201510270588").unwrap();
        assert_eq!(addr.to_string(), "00201510270588");
        let f = read_request(0x10, &addr, READ_DATA, 0x01);
        assert_eq!(&f[4..11], [0x88, 0x05, 0x27, 0x10, 0x15, 0x20, 0x00]);
        assert!(Address::parse("0020151027058").is_none());
    }

    /// A meter's reply as bytes: preamble, header, data, checksum, end.
    fn reply(meter_type: u8, addr: &Address, control: u8, data: &[u8]) -> alloc::vec::Vec<u8> {
        let mut f = alloc::vec![0xFE, 0xFE, START, meter_type];
        f.extend_from_slice(&addr.0);
        f.extend_from_slice(&[control, data.len() as u8]);
        f.extend_from_slice(data);
        let cs = checksum(&f[2..]);
        f.extend_from_slice(&[cs, END]);
        f
    }

    #[test]
    fn a_water_meters_reply_is_found_checked_and_decoded() {
        let addr = Address::parse("00201510270588").unwrap();
        // 901F, SER 01, current 1234.56 m3 (56 34 12 00, 2C), settlement-day 1200.00 m3,
        // time 2017-01-09 17:20:06 (06 20 17 09 01 17 20), status 00 00.
        let data = [
            0x90, 0x1F, 0x01, 0x56, 0x34, 0x12, 0x00, 0x2C, 0x00, 0x00, 0x12, 0x00, 0x2C, 0x06,
            0x20, 0x17, 0x09, 0x01, 0x17, 0x20, 0x00, 0x00,
        ];
        let bytes = reply(0x10, &addr, 0x81, &data);
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
        let frame = &bytes[start..end];
        let Ok(Reply::Data(values)) = parse_reply(0x10, &addr, READ_DATA, 0x01, frame) else {
            panic!()
        };
        let volume = bcd::Format::parse("XXXXXX.XX", false).unwrap();
        assert_eq!(bcd::decode(&values, volume), Ok(1_234.56));
        assert_eq!(Unit::of_code(values[4]).map(|u| u.name), Some("m3"));
        assert_eq!(bcd::decode(&values[5..], volume), Ok(1_200.0));
        // Another number (a late reply to an earlier request), type or meter; noise.
        assert_eq!(
            parse_reply(0x10, &addr, READ_DATA, 0x02, frame),
            Err(FrameError::Mismatch)
        );
        assert_eq!(
            parse_reply(0x20, &addr, READ_DATA, 0x01, frame),
            Err(FrameError::Mismatch)
        );
        let other = Address::parse("00201510270589").unwrap();
        assert_eq!(
            parse_reply(0x10, &other, READ_DATA, 0x01, frame),
            Err(FrameError::Mismatch)
        );
        let mut noisy = frame.to_vec();
        noisy[15] ^= 1;
        assert_eq!(
            parse_reply(0x10, &addr, READ_DATA, 0x01, &noisy),
            Err(FrameError::Checksum)
        );
        // An abnormal reply: its status byte.
        let abnormal = reply(0x10, &addr, 0xC1, &[0x90, 0x1F, 0x01, 0x04]);
        assert_eq!(
            parse_reply(0x10, &addr, READ_DATA, 0x01, &abnormal[2..]),
            Ok(Reply::Error(0x04))
        );
    }

    #[test]
    fn noise_with_a_start_byte_is_passed_over_to_the_frame_behind_it() {
        let addr = Address::parse("00000000000041").unwrap();
        let frame = reply(0x10, &addr, 0x81, &[0x90, 0x1F, 0x07]);
        let mut bytes = alloc::vec![0x68, 0x00, 0x01];
        bytes.extend_from_slice(&[0x00; 14]);
        bytes.extend_from_slice(&frame);
        let Scan::Frame { start, end } = find_frame(&bytes) else {
            panic!()
        };
        assert_eq!(&bytes[start..end], &frame[2..]);
    }

    #[test]
    fn values_keep_their_unit_or_convert_within_its_kind() {
        let u = |n| Unit::named(n).unwrap();
        assert_eq!(convert(1_234.56, u("m3"), u("m3")), Some(1_234.56));
        assert_eq!(convert(1_500.0, u("L"), u("m3")), Some(1.5));
        assert_eq!(convert(2.0, u("MWh"), u("kWh")), Some(2_000.0));
        let gj = convert(1.0, u("GJ"), u("kWh")).unwrap();
        assert!((gj - 277.777_777_777_8).abs() < 1e-9, "{gj}");
        assert_eq!(convert(1.0, u("GJ"), u("m3")), None);
        assert!(Unit::of_code(0x2C).is_some() && Unit::of_code(0x2D).is_none());
    }
}
