//! The Workload API's `:authority` repair (`agent::fuzzing::AuthorityRewriter`).
//!
//! The client's bytes are fed in reads of a fuzzer-chosen size, either as given or built
//! from a list of frames (HPACK fields in every representation, a percent-encoded socket
//! path or a valid authority, large values, padding, priority, CONTINUATION splits,
//! interleaved and raw frames). Properties:
//! - after every read, what the connection holds plus what the read produced stays within
//!   `MAX_BUFFERED`;
//! - the output, read as HTTP/2 frames, is the input with only `:authority` values changed:
//!   the preface and every frame other than a header block are identical; each header
//!   block, decoded as the HTTP/2 server decodes it, has the client's fields in order, with
//!   an invalid `:authority` replaced by `localhost`, the same stream, END_STREAM and
//!   priority, in frames within the maximum frame size; or, from some frame on, the output
//!   is the rest of the input byte for byte (passed through);
//! - once passed through after a repaired block, every later header block means to the
//!   HTTP/2 server what it meant to the client (or fails to decode there);
//! - the cheap scan of the first header block vouches for it only when the full decoder
//!   finds no invalid `:authority` in it (the scan decides whether the block is forwarded
//!   untouched, which the output check alone would accept as a pass-through).
#![no_main]

use agent::fuzzing::{AuthorityRewriter, MAX_BUFFERED, authority_scan_vouches};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const MAX_FRAME: usize = 16_384;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const TABLE_SIZE: usize = 4096;

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes { read: u16, bytes: Vec<u8> },
    Frames { read: u16, frames: Vec<Frame> },
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Headers {
        stream: u8,
        fields: Vec<Field>,
        end_stream: bool,
        priority: Option<[u8; 5]>,
        pad: Option<u8>,
        /// Where the block is cut into HEADERS + CONTINUATION frames.
        splits: Vec<u16>,
    },
    Data {
        stream: u8,
        payload: Vec<u8>,
    },
    Settings,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Field {
    Literal {
        name: Name,
        value: Value,
        repr: Repr,
    },
    /// An indexed field: static (1..=61) or dynamic (62..) table.
    Indexed(u8),
    SizeUpdate(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Repr {
    Indexing,
    WithoutIndexing,
    NeverIndexed,
}

#[derive(Arbitrary, Debug)]
enum Name {
    Authority,
    Path,
    Method,
    Workload,
    Other(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Value {
    SocketPath,
    Localhost,
    Bytes(Vec<u8>),
    /// A long run of one byte.
    Long(u8, u16),
}

fn encode_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn build(frames: &[Frame]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    for f in frames {
        match f {
            Frame::Headers {
                stream,
                fields,
                end_stream,
                priority,
                pad,
                splits,
            } => {
                let mut block = Vec::new();
                for field in fields {
                    match field {
                        Field::Literal { name, value, repr } => {
                            let (first, bits) = match repr {
                                Repr::Indexing => (0x40, 6),
                                Repr::WithoutIndexing => (0x00, 4),
                                Repr::NeverIndexed => (0x10, 4),
                            };
                            encode_int(&mut block, first, bits, 0);
                            encode_string(
                                &mut block,
                                match name {
                                    Name::Authority => b":authority",
                                    Name::Path => b":path",
                                    Name::Method => b":method",
                                    Name::Workload => b"workload.spiffe.io",
                                    Name::Other(n) => n,
                                },
                            );
                            let long;
                            encode_string(
                                &mut block,
                                match value {
                                    Value::SocketPath => b"%2Ftmp%2Fagent%2Fapi.sock",
                                    Value::Localhost => b"localhost",
                                    Value::Bytes(b) => b,
                                    Value::Long(b, n) => {
                                        long = vec![*b; usize::from(*n)];
                                        &long
                                    }
                                },
                            );
                        }
                        Field::Indexed(i) => encode_int(&mut block, 0x80, 7, usize::from(*i)),
                        Field::SizeUpdate(n) => encode_int(&mut block, 0x20, 5, usize::from(*n)),
                    }
                }
                let stream = u32::from(*stream);
                let mut first = Vec::new();
                let mut flags = if *end_stream { END_STREAM } else { 0 };
                if let Some(p) = pad {
                    flags |= PADDED;
                    first.push(*p);
                }
                if let Some(p) = priority {
                    flags |= PRIORITY;
                    first.extend_from_slice(p);
                }
                let mut cuts: Vec<usize> = splits
                    .iter()
                    .map(|&s| usize::from(s) % (block.len() + 1))
                    .collect();
                cuts.push(block.len());
                cuts.sort_unstable();
                cuts.dedup();
                let mut at = 0;
                for (i, &cut) in cuts.iter().enumerate() {
                    let last = i + 1 == cuts.len();
                    let chunk = &block[at..cut];
                    at = cut;
                    let end = if last { END_HEADERS } else { 0 };
                    if i == 0 {
                        first.extend_from_slice(chunk);
                        if let Some(p) = pad {
                            first.resize(first.len() + usize::from(*p), 0);
                        }
                        frame(&mut out, HEADERS, flags | end, stream, &first);
                    } else {
                        frame(&mut out, CONTINUATION, end, stream, chunk);
                    }
                }
            }
            Frame::Data { stream, payload } => {
                frame(&mut out, 0x0, 0, u32::from(*stream), payload);
            }
            Frame::Settings => frame(&mut out, 0x4, 0, 0, &[]),
            Frame::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// One frame read from `bytes`, if complete: (type, flags, stream, payload, length).
fn next_frame(bytes: &[u8]) -> Option<(u8, u8, u32, &[u8], usize)> {
    if bytes.len() < FRAME_HEADER {
        return None;
    }
    let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
    let total = FRAME_HEADER + len;
    if bytes.len() < total {
        return None;
    }
    let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
    Some((
        bytes[3],
        bytes[4],
        stream,
        &bytes[FRAME_HEADER..total],
        total,
    ))
}

/// A complete header block at the start of `bytes`, as a server reads it: (stream,
/// END_STREAM, priority, block, bytes used, largest frame), or `None` when it is not one
/// (not HEADERS, incomplete, malformed padding, interleaved frames).
#[allow(clippy::type_complexity)]
fn header_block(bytes: &[u8]) -> Option<(u32, bool, Option<Vec<u8>>, Vec<u8>, usize, usize)> {
    let (kind, flags, stream, payload, mut used) = next_frame(bytes)?;
    if kind != HEADERS {
        return None;
    }
    let mut largest = payload.len();
    let mut body = payload;
    if flags & PADDED != 0 {
        let (&pad, rest) = body.split_first()?;
        body = &rest[..rest.len().checked_sub(usize::from(pad))?];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        if body.len() < 5 {
            return None;
        }
        priority = Some(body[..5].to_vec());
        body = &body[5..];
    }
    let mut block = body.to_vec();
    let mut end = flags & END_HEADERS != 0;
    while !end {
        let (kind, flags, s, payload, n) = next_frame(&bytes[used..])?;
        if kind != CONTINUATION || s != stream {
            return None;
        }
        block.extend_from_slice(payload);
        largest = largest.max(payload.len());
        used += n;
        end = flags & END_HEADERS != 0;
    }
    Some((
        stream,
        flags & END_STREAM != 0,
        priority,
        block,
        used,
        largest,
    ))
}

fn decoder() -> loona_hpack::Decoder<'static> {
    let mut d = loona_hpack::Decoder::new();
    d.set_max_allowed_table_size(TABLE_SIZE);
    d
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn decode(d: &mut loona_hpack::Decoder<'static>, block: &[u8]) -> Option<Fields> {
    d.decode(block).ok()
}

fn repaired(fields: &Fields) -> Fields {
    fields
        .iter()
        .map(|(n, v)| {
            if n == b":authority" && http::uri::Authority::try_from(v.as_slice()).is_err() {
                (n.clone(), b"localhost".to_vec())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}

/// Checks `output` against `input` (see the module doc).
fn check(input: &[u8], output: &[u8]) {
    let n = input.len().min(PREFACE.len());
    if input[..n] != PREFACE[..n] || input.len() <= PREFACE.len() {
        assert_eq!(
            output, input,
            "not HTTP/2 (or only the preface): passed through"
        );
        return;
    }
    assert_eq!(&output[..PREFACE.len()], PREFACE);
    let mut inp = &input[PREFACE.len()..];
    let mut out = &output[PREFACE.len()..];
    let mut client = decoder();
    let mut server = decoder();
    let mut repaired_blocks = 0;
    loop {
        if out == inp {
            break;
        }
        if let Some((stream, end_stream, priority, block, used, _)) = header_block(inp) {
            let fields = decode(&mut client, &block);
            let (o_stream, o_end, o_prio, o_block, o_used, largest) =
                header_block(out).expect("a header block is emitted as a header block");
            assert_eq!(o_stream, stream);
            assert_eq!(o_end, end_stream);
            assert_eq!(o_prio, priority);
            assert!(largest <= MAX_FRAME, "frames within the maximum frame size");
            assert_eq!(out[4] & PADDED, 0);
            let fields = fields.expect("only a decodable block is rewritten");
            let seen = decode(&mut server, &o_block).expect("a rewritten block decodes");
            assert_eq!(seen, repaired(&fields), "only :authority changes");
            repaired_blocks += 1;
            inp = &inp[used..];
            out = &out[o_used..];
            continue;
        }
        match next_frame(inp) {
            Some((kind, _, _, _, used)) if kind != HEADERS && kind != CONTINUATION => {
                assert_eq!(
                    out.get(..used),
                    Some(&inp[..used]),
                    "a frame other than a header block is forwarded untouched"
                );
                inp = &inp[used..];
                out = &out[used..];
            }
            // An incomplete unit: nothing of it may have been emitted yet.
            _ => {
                assert!(out.is_empty(), "output that is not the input's");
                return;
            }
        }
    }
    if repaired_blocks == 0 {
        return;
    }
    // Passed through after repairs: the server's table must still mean the client's.
    while let Some((_, _, _, block, used, _)) = header_block(inp) {
        let (Some(meant), Some(seen)) = (decode(&mut client, &block), decode(&mut server, &block))
        else {
            return;
        };
        assert_eq!(
            seen, meant,
            "a passed-through block reads differently to the server"
        );
        inp = &inp[used..];
    }
}

fuzz_target!(|input: Input| {
    let (read, bytes) = match input {
        Input::Bytes { read, bytes } => (read, bytes),
        Input::Frames { read, frames } => (read, build(&frames)),
    };
    let read = 1 + usize::from(read) % 8192;
    let mut rw = AuthorityRewriter::default();
    let mut out = Vec::new();
    for chunk in bytes.chunks(read) {
        let before = out.len();
        rw.feed(chunk, &mut out);
        let held = rw.buffered() + (out.len() - before);
        assert!(held <= MAX_BUFFERED, "{held} bytes held by one connection");
    }
    check(&bytes, &out);
    if let Some(mut rest) = bytes.strip_prefix(PREFACE) {
        while let Some((kind, _, _, _, used)) = next_frame(rest) {
            if kind == HEADERS {
                break;
            }
            rest = &rest[used..];
        }
        if let Some((_, _, _, block, _, _)) = header_block(rest) {
            if authority_scan_vouches(&block) {
                if let Some(fields) = decode(&mut decoder(), &block) {
                    assert_eq!(
                        repaired(&fields),
                        fields,
                        "the scan vouched for a block with an invalid :authority"
                    );
                }
            }
        }
    }
});
