//! The cheap look at a connection's first header block: finds every `:authority` field and
//! tells whether all of them are valid authorities, decoding nothing else.
//!
//! Almost every client sends a valid `:authority`, and for those the repair forwards the
//! connection as received. Proving that needs only the `:authority` values, not the whole
//! header list the full HPACK decoder builds (every name and value copied out). The scan
//! walks the block's representations (RFC 7541 §6), skips every string that is not an
//! `:authority` value by its length, and decodes only those values, with the static Huffman
//! code (RFC 7541 Appendix B) when they are Huffman-coded; a literal's new name is read
//! (Huffman-decoded up to the length of `:authority`) only to tell whether it is
//! `:authority`.
//!
//! It answers "valid" only when it has followed every representation and every
//! `:authority` it met is a valid authority. Anything else is "doubtful" and the caller runs
//! the full decoder, exactly as before the scan existed:
//! - an indexed field or a literal name in the dynamic table (index above 61): the scan
//!   keeps no table, so it cannot name the field;
//! - a dynamic table size update;
//! - the static entry 1 used as a whole field (`:authority` with an empty value, which
//!   is not a valid authority);
//! - index 0, an integer past 2^28, a string running past the block, a Huffman string
//!   with an EOS symbol, overlong or non-EOS padding (all errors for the HTTP/2 stack too);
//! - an `:authority` value that is not a valid authority (the full decoder repairs it).
//!
//! "Valid" forwards the block as received, which is also what the full decoder does for a
//! block whose every `:authority` is valid, for one it cannot decode and for one over the
//! header list limit: the scan can only ever skip work, never change the bytes sent on.

use std::sync::LazyLock;

/// Entries of the HPACK static table (RFC 7541 Appendix A); indices above it are dynamic.
const STATIC_TABLE_LEN: usize = 61;
/// The static table's `:authority` entry (with an empty value).
const AUTHORITY_INDEX: usize = 1;
const AUTHORITY: &[u8] = b":authority";
/// Largest integer the scan follows; far above any index or string length a block within
/// the collection limit can hold.
const MAX_INTEGER: usize = 1 << 28;

/// Whether every `:authority` field of the header block `block` is a valid authority by
/// `valid`; `false` when one is not, or when the scan cannot tell (see the module docs).
/// `block` must be the first header block of its connection: the scan assumes an empty
/// dynamic table, and refuses references to it anyway.
pub(super) fn authorities_valid(mut block: &[u8], valid: impl Fn(&[u8]) -> bool) -> bool {
    while let Some(&first) = block.first() {
        // Indexed header field (§6.1).
        if first & 0x80 != 0 {
            let Some((index, rest)) = integer(block, 7) else {
                return false;
            };
            if index == 0 || index == AUTHORITY_INDEX || index > STATIC_TABLE_LEN {
                return false;
            }
            block = rest;
            continue;
        }
        // Literal with incremental indexing (§6.2.1), a size update (§6.3), or a literal
        // without indexing / never indexed (§6.2.2, §6.2.3).
        let prefix = if first & 0x40 != 0 {
            6
        } else if first & 0x20 != 0 {
            return false;
        } else {
            4
        };
        let Some((index, rest)) = integer(block, prefix) else {
            return false;
        };
        block = rest;
        let is_authority = match index {
            0 => {
                let Some((name, rest)) = string(block) else {
                    return false;
                };
                block = rest;
                match name.decoded(AUTHORITY.len()) {
                    Ok(name) => name == AUTHORITY,
                    Err(Huffman::TooLong) => false,
                    Err(Huffman::Invalid) => return false,
                }
            }
            AUTHORITY_INDEX => true,
            i if i <= STATIC_TABLE_LEN => false,
            _ => return false,
        };
        let Some((value, rest)) = string(block) else {
            return false;
        };
        block = rest;
        if is_authority {
            match value.decoded(usize::MAX) {
                Ok(value) if valid(&value) => {}
                _ => return false,
            }
        }
    }
    true
}

/// An HPACK integer with an `prefix`-bit prefix (§5.1), and the bytes after it.
fn integer(bytes: &[u8], prefix: u8) -> Option<(usize, &[u8])> {
    let (&first, mut rest) = bytes.split_first()?;
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Some((value, rest));
    }
    let mut shift = 0u32;
    loop {
        let (&byte, tail) = rest.split_first()?;
        rest = tail;
        value = value.checked_add(usize::from(byte & 0x7f) << shift)?;
        if value > MAX_INTEGER {
            return None;
        }
        if byte & 0x80 == 0 {
            return Some((value, rest));
        }
        shift += 7;
    }
}

/// A string literal as it is on the wire (§5.2).
struct Str<'a> {
    huffman: bool,
    bytes: &'a [u8],
}

/// A string literal and the bytes after it.
fn string(bytes: &[u8]) -> Option<(Str<'_>, &[u8])> {
    let huffman = bytes.first()? & 0x80 != 0;
    let (len, rest) = integer(bytes, 7)?;
    let (bytes, rest) = rest.split_at_checked(len)?;
    Some((Str { huffman, bytes }, rest))
}

impl Str<'_> {
    /// The octets, Huffman-decoded when so coded, up to `max` of them.
    fn decoded(&self, max: usize) -> Result<std::borrow::Cow<'_, [u8]>, Huffman> {
        if !self.huffman {
            return Ok(std::borrow::Cow::Borrowed(self.bytes));
        }
        huffman_decode(self.bytes, max).map(std::borrow::Cow::Owned)
    }
}

/// Why a Huffman-coded string was not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Huffman {
    /// It decodes to more than the octets asked for.
    TooLong,
    /// Not a valid Huffman string (§5.2): EOS inside, padding longer than 7 bits or not
    /// the most significant bits of EOS.
    Invalid,
}

/// The static Huffman code as (code, length) per symbol 0..=256 (RFC 7541 Appendix B;
/// 256 is EOS).
#[rustfmt::skip]
const HUFFMAN_CODE: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
];

/// Longest code, in bits.
const MAX_CODE_LEN: usize = 30;
const EOS: u16 = 256;

/// The code arranged for decoding: for each length, the (code, symbol) pairs of that
/// length sorted by code.
struct Decoding {
    by_len: Vec<Vec<(u32, u16)>>,
}

static DECODING: LazyLock<Decoding> = LazyLock::new(|| {
    let mut by_len = vec![Vec::new(); MAX_CODE_LEN + 1];
    for (symbol, &(code, len)) in (0u16..).zip(HUFFMAN_CODE.iter()) {
        if let Some(codes) = by_len.get_mut(usize::from(len)) {
            codes.push((code, symbol));
        }
    }
    for codes in &mut by_len {
        codes.sort_unstable();
    }
    Decoding { by_len }
});

/// Decodes a Huffman-coded string (§5.2) into at most `max` octets.
pub(super) fn huffman_decode(bytes: &[u8], max: usize) -> Result<Vec<u8>, Huffman> {
    let decoding = &*DECODING;
    let mut out = Vec::with_capacity(max.min(bytes.len() * 8 / 5));
    let mut code = 0u32;
    let mut len = 0usize;
    for byte in bytes {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            let Some(codes) = decoding.by_len.get(len) else {
                return Err(Huffman::Invalid);
            };
            if let Ok(i) = codes.binary_search_by_key(&code, |&(c, _)| c) {
                let symbol = codes.get(i).map_or(EOS, |&(_, s)| s);
                let Ok(octet) = u8::try_from(symbol) else {
                    return Err(Huffman::Invalid);
                };
                if out.len() >= max {
                    return Err(Huffman::TooLong);
                }
                out.push(octet);
                code = 0;
                len = 0;
            }
        }
    }
    // What is left is padding: at most 7 bits, all ones (EOS begins with 30 ones).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(Huffman::Invalid);
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Huffman-codes `s` with the static code, padding with ones (§5.2).
    pub(in crate::workload_api::authority) fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in s {
            let (code, len) = HUFFMAN_CODE[usize::from(b)];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            let pad = 8 - bits;
            out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }

    #[test]
    fn huffman_decodes_the_rfc_examples_and_every_octet() {
        // RFC 7541 C.4.1 and C.4.2.
        let www = hex::decode("f1e3c2e5f23a6ba0ab90f4ff").unwrap();
        assert_eq!(huffman_decode(&www, 64).unwrap(), b"www.example.com");
        let no_cache = hex::decode("a8eb10649cbf").unwrap();
        assert_eq!(huffman_decode(&no_cache, 64).unwrap(), b"no-cache");
        let every: Vec<u8> = (0..=255).collect();
        let coded = huffman_encode(&every);
        assert_eq!(huffman_decode(&coded, 256).unwrap(), every);
        // Checked against the full decoder's Huffman code.
        let theirs = loona_hpack::huffman::HuffmanDecoder::new()
            .decode(&coded)
            .unwrap();
        assert_eq!(theirs, every);
        assert_eq!(huffman_decode(&coded, 255), Err(Huffman::TooLong));
        assert_eq!(huffman_decode(&[], 0).unwrap(), b"");
    }

    #[test]
    fn huffman_refuses_bad_padding_and_eos() {
        // 'a' is 00011: padded with zeros instead of ones.
        assert_eq!(huffman_decode(&[0b0001_1000], 8), Err(Huffman::Invalid));
        // A whole byte of padding.
        assert_eq!(
            huffman_decode(&[0b0001_1111, 0xff], 8),
            Err(Huffman::Invalid)
        );
        // EOS (30 ones) inside the string.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xfc], 8),
            Err(Huffman::Invalid)
        );
        assert_eq!(huffman_decode(&[0b0001_1111], 8).unwrap(), b"a");
    }
}
