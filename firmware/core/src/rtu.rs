//! Modbus RTU framing, the client's side: the request of a register read and the checks of its
//! answer (Modbus over serial line V1.02, 2.5.1; the application protocol V1.1b3, 6.3 and 6.4).
//!
//! The edge frames RTU itself, on a serial line and over TCP to a serial device server
//! (`rtu+tcp://`), so that a corrupt answer is known as corrupt the moment its last byte
//! arrives, not after a timeout, and is reported as `crc`.

/// The Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF); on the wire low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Function codes of the register reads.
pub const READ_HOLDING: u8 = 0x03;
pub const READ_INPUT: u8 = 0x04;

/// The 8 bytes of a read request: unit, function, start, count, CRC.
pub fn read_request(unit: u8, function: u8, start: u16, count: u16) -> [u8; 8] {
    let [sh, sl] = start.to_be_bytes();
    let [ch, cl] = count.to_be_bytes();
    let mut f = [unit, function, sh, sl, ch, cl, 0, 0];
    let [lo, hi] = crc16(&f[..6]).to_le_bytes();
    f[6] = lo;
    f[7] = hi;
    f
}

/// How long the answer to a read of `count` registers is, as far as `buf` (what has arrived
/// so far) shows: `None` until its third byte (function and byte count, or the exception).
pub fn answer_len(buf: &[u8]) -> Option<usize> {
    match buf {
        [_, function, ..] if function & 0x80 != 0 => Some(5),
        [_, _, byte_count, ..] => Some(5 + usize::from(*byte_count)),
        _ => None,
    }
}

/// What a well-formed answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The registers asked for, in order.
    #[cfg(feature = "alloc")]
    Registers(alloc::vec::Vec<u16>),
    /// The device refused, with this exception code.
    Exception(u8),
}

/// Why an answer is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The CRC does not match: noise on the line, or a collision.
    Crc,
    /// A sound frame that does not answer the request: another unit, function or length.
    Mismatch,
}

/// Checks a whole answer (`frame`, as long as [`answer_len`] said) against its `request`.
#[cfg(feature = "alloc")]
pub fn parse_answer(request: &[u8; 8], frame: &[u8]) -> Result<Answer, FrameError> {
    if frame.len() < 5 {
        return Err(FrameError::Mismatch);
    }
    let (body, crc) = frame.split_at(frame.len() - 2);
    if crc16(body).to_le_bytes() != [crc[0], crc[1]] {
        return Err(FrameError::Crc);
    }
    if body[0] != request[0] || body[1] & 0x7F != request[1] {
        return Err(FrameError::Mismatch);
    }
    if body[1] & 0x80 != 0 {
        return Ok(Answer::Exception(body[2]));
    }
    let count = u16::from_be_bytes([request[4], request[5]]);
    if usize::from(body[2]) != 2 * usize::from(count) || body.len() != 3 + 2 * usize::from(count) {
        return Err(FrameError::Mismatch);
    }
    Ok(Answer::Registers(
        body[3..]
            .chunks_exact(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_request_is_framed_as_the_specification_shows() {
        // The specification's example (application protocol 6.3): read holding registers
        // 108-110 (start 0x006B, three registers) of unit 0x11; its RTU frame ends in the
        // CRC 0x8776, sent 76 87.
        assert_eq!(
            read_request(0x11, READ_HOLDING, 0x006B, 3),
            [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]
        );
    }

    #[test]
    fn answers_are_checked_and_a_corrupt_one_is_told_apart() {
        let req = read_request(1, READ_INPUT, 0x10, 2);
        let mut answer = [1, 4, 4, 0x12, 0x34, 0x56, 0x78, 0, 0].to_vec();
        let crc = crc16(&answer[..7]).to_le_bytes();
        answer[7..].copy_from_slice(&crc);
        assert_eq!(answer_len(&answer[..2]), None);
        assert_eq!(answer_len(&answer[..3]), Some(9));
        assert_eq!(
            parse_answer(&req, &answer),
            Ok(Answer::Registers(alloc::vec![0x1234, 0x5678]))
        );
        let mut noisy = answer.clone();
        noisy[4] ^= 0x10;
        assert_eq!(parse_answer(&req, &noisy), Err(FrameError::Crc));
        let mut other = answer.clone();
        other[0] = 2;
        let crc = crc16(&other[..7]).to_le_bytes();
        other[7..].copy_from_slice(&crc);
        assert_eq!(parse_answer(&req, &other), Err(FrameError::Mismatch));
        let mut refused = [1, 0x84, 0x02, 0, 0];
        let crc = crc16(&refused[..3]).to_le_bytes();
        refused[3..].copy_from_slice(&crc);
        assert_eq!(answer_len(&refused), Some(5));
        assert_eq!(parse_answer(&req, &refused), Ok(Answer::Exception(2)));
    }
}
