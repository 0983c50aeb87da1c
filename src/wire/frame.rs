//! Byte frames: how a message travels on a stream (TCP) or in a datagram.
//!
//! ```text
//!  offset 0        1                5                9
//!         +--------+----------------+----------------+----------------------+
//!         | version| payload length | crc32          | payload              |
//!         | u8     | u32 LE         | u32 LE         | `length` bytes       |
//!         +--------+----------------+----------------+----------------------+
//!  crc32 (crc32fast, IEEE) covers bytes [0, 5) of the header and the payload,
//!  so a corrupted version or length is caught as surely as a corrupted payload.
//! ```
//!
//! A reader checks the version and the length limit *before* reading the
//! payload, so garbage cannot make it allocate a huge buffer, and checks the
//! crc before handing the payload on. Any failure closes that connection;
//! there is no resynchronisation inside a stream.

/// Bumped on any incompatible change to frames or messages.
pub const PROTOCOL_VERSION: u8 = 5;
/// Header bytes before the payload.
pub const FRAME_HEADER_LEN: usize = 9;
/// Largest payload a frame may carry (16 MiB).
pub const FRAME_PAYLOAD_LEN_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol version {got} not supported (this build speaks version {PROTOCOL_VERSION})")]
    Version { got: u8 },
    #[error("frame of {len} bytes exceeds the limit of {FRAME_PAYLOAD_LEN_MAX} bytes")]
    TooLarge { len: usize },
    #[error("frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
}

fn checksum(header_prefix: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header_prefix);
    h.update(payload);
    h.finalize()
}

/// Encodes `payload` as one frame. Panics if the payload exceeds
/// [`FRAME_PAYLOAD_LEN_MAX`]: callers bound what they build (messages are
/// encoded with that limit), so that would be a bug.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= FRAME_PAYLOAD_LEN_MAX,
        "frame payload over limit"
    );
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = checksum(&out[0..5], payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A checked header: how many payload bytes follow and their expected crc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    bytes: [u8; FRAME_HEADER_LEN],
}

impl FrameHeader {
    /// Checks the version and the length limit.
    pub fn parse(bytes: [u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        if bytes[0] != PROTOCOL_VERSION {
            return Err(FrameError::Version { got: bytes[0] });
        }
        let header = FrameHeader { bytes };
        if header.payload_len() > FRAME_PAYLOAD_LEN_MAX {
            return Err(FrameError::TooLarge {
                len: header.payload_len(),
            });
        }
        Ok(header)
    }

    pub fn payload_len(&self) -> usize {
        u32::from_le_bytes(self.bytes[1..5].try_into().unwrap()) as usize
    }

    /// Checks `payload` against the header's crc.
    pub fn verify(&self, payload: &[u8]) -> Result<(), FrameError> {
        let stored = u32::from_le_bytes(self.bytes[5..9].try_into().unwrap());
        let computed = checksum(&self.bytes[0..5], payload);
        if stored == computed {
            Ok(())
        } else {
            Err(FrameError::Checksum { stored, computed })
        }
    }
}

/// Decodes one frame at the start of `buf`, returning its payload and the
/// number of bytes it took.
pub fn decode_frame(buf: &[u8]) -> Result<(&[u8], usize), FrameError> {
    let header_bytes: [u8; FRAME_HEADER_LEN] = buf
        .get(..FRAME_HEADER_LEN)
        .ok_or(FrameError::Truncated {
            need: FRAME_HEADER_LEN,
            have: buf.len(),
        })?
        .try_into()
        .unwrap();
    let header = FrameHeader::parse(header_bytes)?;
    let total = FRAME_HEADER_LEN + header.payload_len();
    let payload = buf
        .get(FRAME_HEADER_LEN..total)
        .ok_or(FrameError::Truncated {
            need: total,
            have: buf.len(),
        })?;
    header.verify(payload)?;
    Ok((payload, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_layout_is_as_documented() {
        let f = encode_frame(b"abc");
        assert_eq!(f.len(), FRAME_HEADER_LEN + 3);
        assert_eq!(f[0], PROTOCOL_VERSION);
        assert_eq!(&f[1..5], &3u32.to_le_bytes());
        assert_eq!(&f[9..], b"abc");
    }

    #[test]
    fn rejects_wrong_version_and_oversized_length_before_reading_the_payload() {
        let mut f = encode_frame(b"abc");
        f[0] = 99;
        assert_eq!(decode_frame(&f), Err(FrameError::Version { got: 99 }));
        let mut f = encode_frame(b"abc");
        f[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_frame(&f), Err(FrameError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let f = encode_frame(&payload);
            let (got, used) = decode_frame(&f).unwrap();
            prop_assert_eq!(got, &payload[..]);
            prop_assert_eq!(used, f.len());
        }

        #[test]
        fn any_single_bit_flip_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            bit in any::<proptest::sample::Index>(),
        ) {
            let mut f = encode_frame(&payload);
            let i = bit.index(f.len() * 8);
            f[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode_frame(&f).is_err());
        }

        #[test]
        fn truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..300), cut in any::<proptest::sample::Index>()) {
            let f = encode_frame(&payload);
            let keep = cut.index(f.len());
            let truncated = matches!(decode_frame(&f[..keep]), Err(FrameError::Truncated { .. }));
            prop_assert!(truncated);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_frame(&bytes);
        }
    }
}
