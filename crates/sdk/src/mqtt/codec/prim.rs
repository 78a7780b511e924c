//! Wire primitives: variable byte integers, length-prefixed strings and binary data, and a
//! bounds-checked reader so decoding can never index past the end of a packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

/// Largest value a (four-byte) variable byte integer can carry.
pub const MAX_VAR_INT: u32 = 268_435_455;

/// Writes `value` (clamped to [`MAX_VAR_INT`]) as a variable byte integer of 1 to 4 bytes.
pub fn encode_var_int(value: u32, out: &mut BytesMut) {
    let mut tmp = [0u8; 4];
    let n = var_int_bytes(value, &mut tmp);
    out.put_slice(tmp.get(..n).unwrap_or_default());
}

/// Reads a variable byte integer from the start of `bytes`: `Ok(Some((value, bytes_used)))`,
/// `Ok(None)` if `bytes` ends before the integer does, or an error if the fourth byte still has
/// its continuation bit set (a fifth byte is never allowed).
pub fn decode_var_int(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
        if i == 3 {
            return Err(DecodeError::MalformedVarInt("variable byte integer"));
        }
    }
    Ok(None)
}

/// Fills `tmp` with the encoding of `value` and returns how many bytes were used.
fn var_int_bytes(value: u32, tmp: &mut [u8; 4]) -> usize {
    let mut v = value.min(MAX_VAR_INT);
    for (i, slot) in tmp.iter_mut().enumerate() {
        // `v % 128` always fits in a byte.
        let low = (v % 128) as u8;
        v /= 128;
        *slot = if v > 0 { low | 0x80 } else { low };
        if v == 0 {
            return i + 1;
        }
    }
    // Unreachable for clamped values; keeps the function total without panicking.
    tmp.len()
}

/// Writes the section produced by `body` preceded by its length as a variable byte integer.
///
/// The length is unknown until `body` has run, so four bytes are reserved up front and the
/// body is shifted down afterwards; this costs one `memmove` instead of a temporary buffer.
pub(super) fn with_var_len(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let len_at = out.len();
    out.put_bytes(0, 4);
    let body_at = out.len();
    body(out);
    let body_len = u32::try_from(out.len() - body_at).unwrap_or(u32::MAX);
    let mut tmp = [0u8; 4];
    let n = var_int_bytes(body_len, &mut tmp);
    if let (Some(dst), Some(src)) = (out.get_mut(len_at..len_at + n), tmp.get(..n)) {
        dst.copy_from_slice(src);
    }
    if n < 4 {
        out.copy_within(body_at.., len_at + n);
        out.truncate(out.len() - (4 - n));
    }
}

/// Writes a two-byte-length UTF-8 string, truncated at a char boundary to 65 535 bytes.
pub(super) fn put_str(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_bin(out, s.as_bytes().get(..end).unwrap_or_default());
}

/// Writes two-byte-length binary data, truncated to 65 535 bytes.
pub(super) fn put_bin(out: &mut BytesMut, data: &[u8]) {
    let data = data.get(..usize::from(u16::MAX)).unwrap_or(data);
    out.put_u16(u16::try_from(data.len()).unwrap_or(u16::MAX));
    out.put_slice(data);
}

/// Bounds-checked cursor over one packet body; every read names the field it is reading so
/// truncation errors say where the packet ended too early.
pub(super) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(super) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() < n { Err(DecodeError::Truncated(field)) } else { Ok(()) }
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    pub(super) fn var_int(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match decode_var_int(&self.buf) {
            Ok(Some((value, used))) => {
                self.buf.advance(used);
                Ok(value)
            }
            Ok(None) => Err(DecodeError::Truncated(field)),
            Err(_) => Err(DecodeError::MalformedVarInt(field)),
        }
    }

    /// Splits off the next `n` bytes as their own reader (a property section).
    pub(super) fn sub(&mut self, n: usize, field: &'static str) -> Result<Reader, DecodeError> {
        self.need(n, field)?;
        Ok(Reader::new(self.buf.split_to(n)))
    }

    pub(super) fn binary(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.need(len, field)?;
        Ok(self.buf.split_to(len).to_vec())
    }

    /// An MQTT UTF-8 string: valid UTF-8 without U+0000, which MQTT also calls malformed.
    pub(super) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.binary(field)?;
        let s = String::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8(field))?;
        if s.contains('\0') {
            return Err(DecodeError::InvalidUtf8(field));
        }
        Ok(s)
    }

    /// Everything left (a PUBLISH payload), without copying.
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Errors if anything is left: a packet with a fixed layout must be consumed exactly.
    pub(super) fn finish(&self, packet: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes(packet)) }
    }
}
