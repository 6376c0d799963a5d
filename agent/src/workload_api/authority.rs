//! HTTP/2 `:authority` repair for Workload API clients on the Unix socket.
//!
//! gRPC's C core (and so grpcio, py-spiffe's transport) has, since 1.57, sent the
//! percent-encoded socket path as `:authority` on `unix:` channels (e.g.
//! `%2Frun%2Fagent.sock`). That is not a valid URI authority, and the HTTP/2 stack under
//! tonic resets every such stream with `PROTOCOL_ERROR`, so no py-spiffe workload could
//! talk to the agent. Over a Unix socket the authority carries no meaning (the agent never
//! reads it), so this wrapper rewrites it on the way in:
//!
//! - the 24-byte client preface and every frame other than HEADERS/CONTINUATION pass
//!   through untouched, as does everything the agent writes;
//! - the connection's first header block is scanned cheaply ([`scan`]): when every
//!   `:authority` field in it is a valid authority (every client but grpcio's), it is
//!   forwarded as received and so is everything after it, with nothing decoded but those
//!   values. Whatever the scan cannot vouch for (an invalid `:authority`, a dynamic table
//!   reference or size update, a block split over CONTINUATION frames, anything
//!   malformed) goes to the full decoder below, so the scan only ever saves work;
//! - otherwise each complete client header block is HPACK-decoded (tracking the client's
//!   dynamic table), an `:authority` that is not a valid authority is replaced by `localhost`, and
//!   the block is re-encoded as literals *without indexing*, so the agent's decoder table
//!   never holds anything and cannot drift from ours;
//! - a block that cannot be decoded is passed on as received and rewriting stops for that
//!   connection, leaving the HTTP/2 stack to reject it as it would have;
//! - the first header block decides for the whole connection: when its `:authority` is
//!   valid (every client but grpcio's), it is forwarded as received and so is everything
//!   after it, with no decoding at all. Nothing was changed, so the HTTP/2 stack's HPACK
//!   table matches the client's; a client keeps one authority per connection.
//!
//! The wrapper reads from any local user before attestation, so what it holds per
//! connection is bounded, whatever the client declares:
//!
//! - a frame header declaring more than [`MAX_FRAME_SIZE`] (the SETTINGS_MAX_FRAME_SIZE the
//!   agent's HTTP/2 server advertises) is passed through at once with everything after it:
//!   the HTTP/2 stack rejects it as a FRAME_SIZE_ERROR (RFC 9113 §4.2) on reading the
//!   header, so a client that announces 16 MiB and trickles bytes costs nothing;
//! - a header block is collected up to [`MAX_BLOCK`] bytes, and its decoded size (RFC 7541
//!   §4.1, name + value + 32 per field) up to [`MAX_HEADER_LIST_SIZE`], the limit the HTTP/2
//!   server enforces anyway; past either the block passes through as received, so a small
//!   block of indexed references to a large dynamic-table entry cannot expand in memory;
//! - the bytes waiting for the HTTP/2 stack are produced from at most one read
//!   ([`READ_CHUNK`]) at a time, so they stay within `MAX_BUFFERED` in all (a bound
//!   the unit tests and the fuzz target assert after every read).

mod scan;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE of the agent's HTTP/2 server: the largest frame a client may
/// send it. It is also the protocol's smallest allowed value (RFC 9113 §6.5.2), so every
/// frame the rewriter emits fits whatever the peers negotiated.
pub(crate) const MAX_FRAME_SIZE: u32 = 16_384;
const MAX_FRAME: usize = MAX_FRAME_SIZE as usize;
/// SETTINGS_MAX_HEADER_LIST_SIZE of the agent's HTTP/2 server (decoded size, RFC 7541 §4.1).
/// Workload API requests carry a handful of short headers.
pub(crate) const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Largest encoded header block collected for rewriting; beyond it the block passes through
/// untouched. HPACK literals cost a few bytes per field over their decoded size, so a block
/// within [`MAX_HEADER_LIST_SIZE`] once decoded fits well within this.
const MAX_BLOCK: usize = 2 * MAX_HEADER_LIST_SIZE as usize;
/// SETTINGS_HEADER_TABLE_SIZE of the agent's HTTP/2 server: the protocol's initial value
/// (RFC 9113 §6.5.2), which the server never changes.
const HEADER_TABLE_SIZE: usize = 4096;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8192;
/// Upper bound of what one connection holds in [`AuthorityRewriter`] and
/// [`RepairedStream`]: a partial frame (header and payload within the frame size, plus one
/// read), a collected header block twice (decoded block and raw frames, each within
/// [`MAX_BLOCK`] plus one frame), and the output of one read (the raw frames of a block
/// given up, or its re-encoding).
/// Asserted by the unit tests and the fuzz target after every read.
#[cfg(any(test, feature = "testing"))]
pub(crate) const MAX_BUFFERED: usize =
    (FRAME_HEADER + MAX_FRAME + READ_CHUNK) + 4 * (MAX_BLOCK + FRAME_HEADER + MAX_FRAME);

/// A header block being collected across HEADERS + CONTINUATION frames.
struct Pending {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames exactly as received, for the fallback.
    raw: Vec<u8>,
    /// The block came in more than one frame (HEADERS + CONTINUATION).
    continued: bool,
}

/// Rewrites client header blocks; pure bytes in, bytes out (no I/O), so it is unit-tested
/// without sockets.
pub(crate) struct AuthorityRewriter {
    preface_left: usize,
    input: Vec<u8>,
    /// The client's HPACK state, made when the first block the scan cannot vouch for
    /// arrives (the first block of the connection, so the client's table is still empty).
    decoder: Option<loona_hpack::Decoder<'static>>,
    pending: Option<Pending>,
    passthrough: bool,
    /// A header block was rewritten on this connection: rewrite every later one too.
    rewriting: bool,
    /// Header blocks given to the full decoder (the scan could not vouch for them).
    #[cfg(test)]
    full_decodes: usize,
}

impl std::fmt::Debug for AuthorityRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityRewriter")
            .field("passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self {
            preface_left: PREFACE.len(),
            input: Vec::new(),
            decoder: None,
            pending: None,
            passthrough: false,
            rewriting: false,
            #[cfg(test)]
            full_decodes: 0,
        }
    }
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
    encode_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// Literal header field without indexing, new name (RFC 7541 §6.2.2).
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_string(out, name);
    encode_string(out, value);
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// Whether [`scan`] vouches for `block` as a connection's first header block.
#[cfg(feature = "testing")]
pub(crate) fn first_block_vouched(block: &[u8]) -> bool {
    scan::authorities_valid(block, valid_authority)
}

impl AuthorityRewriter {
    /// Feeds bytes from the client; appends what the HTTP/2 server should read to `out`.
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.passthrough {
            out.extend_from_slice(data);
            return;
        }
        self.input.extend_from_slice(data);
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.input.len());
            let offset = PREFACE.len() - self.preface_left;
            let matches = self.input.get(..n) == PREFACE.get(offset..offset + n);
            out.extend(self.input.drain(..n));
            self.preface_left -= n;
            if !matches {
                // Not HTTP/2 with prior knowledge: nothing to repair.
                self.passthrough = true;
                out.append(&mut self.input);
                return;
            }
        }
        while self.preface_left == 0 && self.input.len() >= FRAME_HEADER {
            let len = usize::from(self.input[0]) << 16
                | usize::from(self.input[1]) << 8
                | usize::from(self.input[2]);
            if len > MAX_FRAME {
                // A frame the HTTP/2 stack refuses on sight: never wait for its payload.
                tracing::debug!(
                    declared = len,
                    "frame larger than the maximum frame size; passing the connection through"
                );
                self.give_up(out, &[]);
                out.append(&mut self.input);
                return;
            }
            if self.input.len() < FRAME_HEADER + len {
                break;
            }
            let raw: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
            self.frame(raw, out);
            if self.passthrough {
                out.append(&mut self.input);
                return;
            }
        }
    }

    /// Bytes held for this connection (partial frame and collected header block).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn buffered(&self) -> usize {
        self.input.len()
            + self
                .pending
                .as_ref()
                .map_or(0, |p| p.block.len() + p.raw.len())
    }

    fn give_up(&mut self, out: &mut Vec<u8>, current: &[u8]) {
        if let Some(p) = self.pending.take() {
            out.extend_from_slice(&p.raw);
        }
        out.extend_from_slice(current);
        self.passthrough = true;
    }

    fn frame(&mut self, raw: Vec<u8>, out: &mut Vec<u8>) {
        let kind = raw[3];
        let flags = raw[4];
        let stream_id = u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]) & 0x7fff_ffff;
        let payload = &raw[FRAME_HEADER..];
        match kind {
            TYPE_HEADERS if self.pending.is_none() => {
                let mut body = payload;
                if flags & FLAG_PADDED != 0 {
                    let Some((&pad, rest)) = body.split_first() else {
                        return self.give_up(out, &raw);
                    };
                    let Some(keep) = rest.len().checked_sub(usize::from(pad)) else {
                        return self.give_up(out, &raw);
                    };
                    body = &rest[..keep];
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    if body.len() < 5 {
                        return self.give_up(out, &raw);
                    }
                    let mut p = [0u8; 5];
                    p.copy_from_slice(&body[..5]);
                    priority = Some(p);
                    body = &body[5..];
                }
                self.pending = Some(Pending {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    block: body.to_vec(),
                    raw: raw.clone(),
                    continued: false,
                });
            }
            TYPE_CONTINUATION
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.stream_id == stream_id) =>
            {
                if let Some(p) = self.pending.as_mut() {
                    p.block.extend_from_slice(payload);
                    p.raw.extend_from_slice(&raw);
                    p.continued = true;
                    if p.block.len() > MAX_BLOCK {
                        return self.give_up(out, &[]);
                    }
                }
            }
            TYPE_HEADERS | TYPE_CONTINUATION => return self.give_up(out, &raw),
            _ if self.pending.is_some() => return self.give_up(out, &raw),
            _ => {
                out.extend_from_slice(&raw);
                return;
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            self.finish(out);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        // The first block of the connection (nothing was rewritten yet, so the client's
        // dynamic table is empty) in one frame: when the scan vouches for every
        // `:authority` in it, it is forwarded as the full decoder would forward it, and the
        // decoder is never needed again on this connection.
        if !self.rewriting && !p.continued && scan::authorities_valid(&p.block, valid_authority) {
            out.extend_from_slice(&p.raw);
            self.passthrough = true;
            return;
        }
        #[cfg(test)]
        {
            self.full_decodes += 1;
        }
        // Decoded with a bound: indexed references to dynamic-table entries let a small
        // block name far more bytes than it holds. The decoder still sees the whole block,
        // so its table stays the client's whatever happens next.
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded_size = 0usize;
        let decoder = self.decoder.get_or_insert_with(|| {
            let mut decoder = loona_hpack::Decoder::new();
            // The client may only grow its dynamic table to what the agent's HTTP/2 server
            // advertises; without this bound our decoder would keep whatever a client
            // inserts.
            decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
            decoder
        });
        let decoded = decoder.decode_with_cb(&p.block, |name, value| {
            decoded_size = decoded_size.saturating_add(name.len() + value.len() + 32);
            if decoded_size <= MAX_HEADER_LIST_SIZE as usize {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        if let Err(e) = decoded {
            tracing::debug!(error = ?e, "undecodable header block; passing the connection through");
            self.pending = Some(p);
            return self.give_up(out, &[]);
        }
        if decoded_size > MAX_HEADER_LIST_SIZE as usize {
            tracing::debug!(
                decoded_size,
                "header list larger than the maximum; passing the connection through"
            );
            self.pending = Some(p);
            return self.give_up(out, &[]);
        }
        let needs_repair = fields
            .iter()
            .any(|(name, value)| name.as_slice() == b":authority" && !valid_authority(value));
        if !needs_repair && !self.rewriting {
            // The first block is fine as it is: so is this connection.
            out.extend_from_slice(&p.raw);
            self.passthrough = true;
            return;
        }
        self.rewriting = true;
        let mut block = Vec::with_capacity(p.block.len() + 64);
        for (name, value) in &fields {
            if name.as_slice() == b":authority" && !valid_authority(value) {
                encode_literal(&mut block, name, b"localhost");
            } else {
                encode_literal(&mut block, name, value);
            }
        }
        let mut first_flags = 0;
        if p.end_stream {
            first_flags |= FLAG_END_STREAM;
        }
        let mut first = Vec::new();
        if let Some(prio) = p.priority {
            first_flags |= FLAG_PRIORITY;
            first.extend_from_slice(&prio);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        if rest.is_empty() {
            first_flags |= FLAG_END_HEADERS;
        }
        frame(out, TYPE_HEADERS, first_flags, p.stream_id, &first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            frame(out, TYPE_CONTINUATION, flags, p.stream_id, chunk);
            rest = tail;
        }
    }
}

/// A Unix-socket connection whose client header blocks go through [`AuthorityRewriter`].
pub(crate) struct RepairedStream {
    inner: UnixStream,
    info: UdsConnectInfo,
    rewriter: AuthorityRewriter,
    ready: Vec<u8>,
    eof: bool,
}

impl std::fmt::Debug for RepairedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairedStream").finish_non_exhaustive()
    }
}

impl RepairedStream {
    /// Wraps an accepted connection, capturing its peer credentials first.
    pub(crate) fn new(inner: UnixStream) -> Self {
        let info = UdsConnectInfo {
            peer_addr: inner.peer_addr().ok().map(Arc::new),
            peer_cred: inner.peer_cred().ok(),
        };
        Self {
            inner,
            info,
            rewriter: AuthorityRewriter::default(),
            ready: Vec::new(),
            eof: false,
        }
    }
}

impl Connected for RepairedStream {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for RepairedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.rewriter.feed(rb.filled(), &mut this.ready);
        }
    }
}

impl AsyncWrite for RepairedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(
        encoder: &mut loona_hpack::Encoder<'_>,
        sid: u32,
        authority: &[u8],
    ) -> Vec<u8> {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority),
            (b"workload.spiffe.io", b"true"),
        ];
        let block = encoder.encode(fields);
        let mut out = Vec::new();
        frame(&mut out, TYPE_HEADERS, FLAG_END_HEADERS, sid, &block);
        out
    }

    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut d = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            if kind == TYPE_HEADERS || kind == TYPE_CONTINUATION {
                let skip = if kind == TYPE_HEADERS && flags & FLAG_PRIORITY != 0 {
                    5
                } else {
                    0
                };
                block.extend_from_slice(&payload[skip..]);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(d.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        blocks
    }

    #[test]
    fn percent_encoded_path_becomes_localhost_across_indexed_requests() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        frame(&mut input, 0x4, 0, 0, &[]); // SETTINGS passes through
        input.extend(headers_frame(&mut enc, 1, b"%2Ftmp%2Fagent%2Fapi.sock"));
        // The second request refers to dynamic-table entries made by the first.
        input.extend(headers_frame(&mut enc, 3, b"%2Ftmp%2Fagent%2Fapi.sock"));
        input.extend(headers_frame(&mut enc, 5, b"localhost"));
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        // Byte-at-a-time feeding exercises every partial-frame path.
        for b in &input {
            rw.feed(std::slice::from_ref(b), &mut out);
        }
        assert!(out.starts_with(PREFACE));
        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 3);
        for b in &blocks {
            let auth = b.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(auth.1, b"localhost");
            let path = b.iter().find(|(n, _)| n == b":path").unwrap();
            assert_eq!(path.1, b"/SpiffeWorkloadAPI/FetchX509SVID");
            assert!(
                b.iter()
                    .any(|(n, v)| n == b"workload.spiffe.io" && v == b"true")
            );
        }
    }

    #[test]
    fn valid_authority_and_other_frames_untouched_and_garbage_passes_through() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(&mut enc, 1, b"localhost:8080"));
        frame(&mut input, 0x0, 0x1, 1, b"\0\0\0\0\0"); // DATA
        // A second request on the same connection, referencing the client's HPACK table.
        input.extend(headers_frame(&mut enc, 3, b"localhost:8080"));
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        // Fed in two pieces: the decision holds across reads.
        let (a, b) = input.split_at(PREFACE.len() + 20);
        rw.feed(a, &mut out);
        rw.feed(b, &mut out);
        assert_eq!(
            out, input,
            "a valid first authority: the connection passes untouched"
        );
        let blocks = decode_all(&out);
        let auth = blocks[0].iter().find(|(n, _)| n == b":authority").unwrap();
        assert_eq!(auth.1, b"localhost:8080");

        // Not HTTP/2: passed through byte for byte.
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        rw.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");

        // An undecodable block is forwarded as received.
        let mut rw = AuthorityRewriter::default();
        let mut input = PREFACE.to_vec();
        frame(
            &mut input,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff],
        );
        let mut out = Vec::new();
        rw.feed(&input, &mut out);
        assert_eq!(out, input);
    }

    #[test]
    fn large_blocks_are_reassembled_and_reemitted_within_the_frame_size() {
        let mut enc = loona_hpack::Encoder::new();
        // As large as the server's header list limit allows.
        let big = vec![b'a'; 16_000];
        let fields: Vec<(&[u8], &[u8])> = vec![(b":authority", b"%2Fx"), (b"x-big", &big)];
        let block = enc.encode(fields);
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(block.len() / 2);
        frame(
            &mut input,
            TYPE_HEADERS,
            FLAG_PRIORITY | FLAG_END_STREAM,
            7,
            &[&[0, 0, 0, 0, 16][..], a].concat(),
        );
        frame(&mut input, TYPE_CONTINUATION, FLAG_END_HEADERS, 7, b);
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        rw.feed(&input, &mut out);
        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 1);
        assert_eq!(
            blocks[0][0],
            (b":authority".to_vec(), b"localhost".to_vec())
        );
        assert_eq!(blocks[0][1].1.len(), 16_000);
        // First frame keeps END_STREAM and PRIORITY and is within the frame size limit.
        let len = (usize::from(out[PREFACE.len()]) << 16)
            | (usize::from(out[PREFACE.len() + 1]) << 8)
            | usize::from(out[PREFACE.len() + 2]);
        assert!(len <= MAX_FRAME);
        assert_eq!(
            out[PREFACE.len() + 4] & (FLAG_END_STREAM | FLAG_PRIORITY),
            FLAG_END_STREAM | FLAG_PRIORITY
        );
    }

    /// Feeds `input` in reads of [`READ_CHUNK`] as the stream does, asserting after each
    /// that the connection's buffers stay within [`MAX_BUFFERED`]; returns the output.
    fn feed_bounded(rw: &mut AuthorityRewriter, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in input.chunks(READ_CHUNK) {
            let before = out.len();
            rw.feed(chunk, &mut out);
            let held = rw.buffered() + (out.len() - before);
            assert!(held <= MAX_BUFFERED, "{held} bytes held");
        }
        out
    }

    #[test]
    fn declared_frame_beyond_the_maximum_passes_through_without_buffering() {
        // The attack: a 16 MiB frame announced, its payload trickled.
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0xff, 0xff, 0xff, 0x04, 0, 0, 0, 0, 0]);
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        rw.feed(&input, &mut out);
        assert_eq!(
            out, input,
            "header forwarded at once, for the HTTP/2 stack to refuse"
        );
        assert_eq!(rw.buffered(), 0);
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..3 {
            rw.feed(&zeros, &mut out);
            assert_eq!(rw.buffered(), 0);
        }
        assert_eq!(out.len(), input.len() + 3 * zeros.len());

        // One byte over the limit, split inside the header, while a header block is being
        // collected: the collected frames come first, in order, then the rest.
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        let block = enc.encode(vec![(&b":authority"[..], &b"%2Fx"[..])]);
        frame(&mut input, TYPE_HEADERS, 0, 1, &block);
        let over = MAX_FRAME + 1;
        input.extend_from_slice(&[(over >> 16) as u8, (over >> 8) as u8, over as u8]);
        input.extend_from_slice(&[TYPE_CONTINUATION, FLAG_END_HEADERS, 0, 0, 0, 1]);
        input.extend_from_slice(&[0u8; 100]);
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        let (a, b) = input.split_at(input.len() - 105);
        rw.feed(a, &mut out);
        rw.feed(b, &mut out);
        assert_eq!(out, input);
        assert_eq!(rw.buffered(), 0);

        // A frame of exactly the maximum size is still collected and repaired.
        let mut block = Vec::new();
        encode_literal(&mut block, b":authority", b"%2Fx");
        encode_literal(&mut block, b"x", &vec![b'v'; MAX_FRAME - 200]);
        let pad = MAX_FRAME - 1 - block.len();
        let mut payload = vec![u8::try_from(pad).unwrap()];
        payload.extend_from_slice(&block);
        payload.resize(MAX_FRAME, 0);
        let mut input = PREFACE.to_vec();
        frame(
            &mut input,
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &payload,
        );
        let mut rw = AuthorityRewriter::default();
        let out = feed_bounded(&mut rw, &input);
        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 1);
        assert_eq!(
            blocks[0][0],
            (b":authority".to_vec(), b"localhost".to_vec())
        );
    }

    #[test]
    fn endless_continuation_frames_are_bounded() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        let block = enc.encode(vec![(&b":authority"[..], &b"%2Fx"[..])]);
        frame(&mut input, TYPE_HEADERS, 0, 1, &block);
        let mut tail = Vec::new();
        for _ in 0..64 {
            frame(&mut tail, TYPE_CONTINUATION, 0, 1, &[0x40; MAX_FRAME]);
        }
        input.extend_from_slice(&tail);
        let mut rw = AuthorityRewriter::default();
        let out = feed_bounded(&mut rw, &input);
        assert_eq!(out, input, "an oversized block passes through as received");
        assert_eq!(rw.buffered(), 0);
    }

    #[test]
    fn indexed_references_cannot_expand_a_block_in_memory() {
        // One 4 KiB entry in the client's dynamic table, then a block of one-byte
        // references to it: 16 KiB encoded would name 64 MiB decoded.
        let big = vec![b'a'; 4000];
        let mut first = Vec::new();
        first.push(0x40); // literal with incremental indexing, new name
        encode_string(&mut first, b"x-big");
        encode_string(&mut first, &big);
        encode_literal(&mut first, b":authority", b"%2Fx");
        let mut input = PREFACE.to_vec();
        frame(&mut input, TYPE_HEADERS, FLAG_END_HEADERS, 1, &first);
        let mut bomb = Vec::new();
        encode_literal(&mut bomb, b":authority", b"%2Fx");
        bomb.resize(MAX_FRAME, 0x80 | 62); // indexed: first dynamic entry
        let mut second = Vec::new();
        frame(&mut second, TYPE_HEADERS, FLAG_END_HEADERS, 3, &bomb);
        input.extend_from_slice(&second);
        let mut rw = AuthorityRewriter::default();
        let out = feed_bounded(&mut rw, &input);
        let blocks = decode_all(&out[..out.len() - second.len()]);
        assert_eq!(blocks.len(), 1, "the first block is repaired");
        assert!(
            out.ends_with(&second),
            "the oversized list passes through as received"
        );
        assert!(rw.passthrough);

        // Nor may the client grow its table beyond what the server advertises.
        let mut grow = Vec::new();
        encode_int(&mut grow, 0x20, 5, 1 << 30); // dynamic table size update
        encode_literal(&mut grow, b":authority", b"%2Fx");
        let mut input = PREFACE.to_vec();
        frame(&mut input, TYPE_HEADERS, FLAG_END_HEADERS, 1, &grow);
        let mut rw = AuthorityRewriter::default();
        let out = feed_bounded(&mut rw, &input);
        assert_eq!(out, input);
        assert!(rw.passthrough);
    }

    /// A string literal Huffman-coded with the static code.
    fn encode_huffman(out: &mut Vec<u8>, s: &[u8]) {
        let coded = scan::tests::huffman_encode(s);
        encode_int(out, 0x80, 7, coded.len());
        out.extend_from_slice(&coded);
    }

    /// The rest of a gRPC request's first block after its `:authority` field.
    fn request_fields(block: &mut Vec<u8>) {
        block.push(0x83); // :method POST (static 3)
        block.push(0x86); // :scheme http (static 6)
        block.push(0x04); // literal without indexing, name :path (static 4)
        encode_huffman(block, b"/SpiffeWorkloadAPI/FetchX509SVID");
        encode_literal(block, b"workload.spiffe.io", b"true");
    }

    /// Feeds one connection that sends the header block `block` as its first request, in
    /// one HEADERS frame; returns the output and the rewriter.
    fn one_block(block: &[u8]) -> (Vec<u8>, Vec<u8>, AuthorityRewriter) {
        let mut input = PREFACE.to_vec();
        frame(&mut input, 0x4, 0, 0, &[]);
        frame(&mut input, TYPE_HEADERS, FLAG_END_HEADERS, 1, block);
        let mut rw = AuthorityRewriter::default();
        let out = feed_bounded(&mut rw, &input);
        (input, out, rw)
    }

    fn authority_of(out: &[u8]) -> Vec<Vec<u8>> {
        decode_all(out)
            .into_iter()
            .map(|b| b.into_iter().find(|(n, _)| n == b":authority").unwrap().1)
            .collect()
    }

    #[test]
    fn huffman_coded_authority_is_read_without_the_full_decoder() {
        // Valid, Huffman-coded, name from the static table: forwarded, nothing decoded.
        for first in [0x01, 0x11, 0x41] {
            // without indexing, never indexed, with incremental indexing (static name 1)
            let mut block = vec![first];
            encode_huffman(&mut block, b"localhost:8080");
            request_fields(&mut block);
            let (input, out, rw) = one_block(&block);
            assert_eq!(out, input, "{first:#x}");
            assert_eq!(rw.full_decodes, 0, "{first:#x}");
            assert!(rw.passthrough);
        }
        // The same with a Huffman-coded new name.
        let mut block = vec![0x40];
        encode_huffman(&mut block, b":authority");
        encode_huffman(&mut block, b"spiffe.example");
        request_fields(&mut block);
        let (input, out, rw) = one_block(&block);
        assert_eq!((out == input, rw.full_decodes), (true, 0));

        // Invalid once Huffman-decoded: the full decoder repairs it.
        for first in [0x01, 0x11, 0x41] {
            let mut block = vec![first];
            encode_huffman(&mut block, b"%2Ftmp%2Fagent%2Fapi.sock");
            request_fields(&mut block);
            let (_, out, rw) = one_block(&block);
            assert_eq!(authority_of(&out), [b"localhost".to_vec()], "{first:#x}");
            assert_eq!(rw.full_decodes, 1);
        }
        let mut block = vec![0x00];
        encode_huffman(&mut block, b":authority");
        encode_huffman(&mut block, b"%2Fx");
        request_fields(&mut block);
        let (_, out, rw) = one_block(&block);
        assert_eq!(authority_of(&out), [b"localhost".to_vec()]);
        assert_eq!(rw.full_decodes, 1);
        // A name that only looks like `:authority` up to its length is another field.
        let mut block = vec![0x00];
        encode_huffman(&mut block, b":authority-x");
        encode_string(&mut block, b"%2Fx");
        request_fields(&mut block);
        let (input, out, rw) = one_block(&block);
        assert_eq!((out == input, rw.full_decodes), (true, 0));
    }

    #[test]
    fn literal_with_indexing_then_indexed_references_are_repaired() {
        // The first block inserts an invalid authority into the client's table; the
        // second refers to it by index (62). The scan refuses the first; the decoder
        // repairs both.
        let mut first = vec![0x41];
        encode_string(&mut first, b"%2Ftmp%2Fagent.sock");
        request_fields(&mut first);
        let mut second = vec![0x80 | 62];
        request_fields(&mut second);
        let mut input = PREFACE.to_vec();
        frame(&mut input, TYPE_HEADERS, FLAG_END_HEADERS, 1, &first);
        frame(&mut input, TYPE_HEADERS, FLAG_END_HEADERS, 3, &second);
        let mut rw = AuthorityRewriter::default();
        let out = feed_bounded(&mut rw, &input);
        assert_eq!(
            authority_of(&out),
            [b"localhost".to_vec(), b"localhost".to_vec()]
        );
        assert_eq!(rw.full_decodes, 2);
    }

    #[test]
    fn what_the_scan_cannot_vouch_for_goes_to_the_full_decoder() {
        // (what, first block, repaired authority or None for forwarded as received)
        let valid = |prefix: &[u8]| {
            let mut b = prefix.to_vec();
            b.push(0x01);
            encode_string(&mut b, b"localhost");
            request_fields(&mut b);
            b
        };
        let mut dynamic_name = valid(&[]);
        dynamic_name.extend_from_slice(&[0x40 | 0x3f, 0x00]); // literal, dynamic name 63
        encode_string(&mut dynamic_name, b"x");
        let mut empty_authority = vec![0x81]; // indexed: static 1, empty value
        request_fields(&mut empty_authority);
        let mut dynamic_ref = vec![0x40];
        encode_string(&mut dynamic_ref, b"x-a");
        encode_string(&mut dynamic_ref, b"b");
        dynamic_ref.push(0x80 | 62);
        dynamic_ref.extend(valid(&[]));
        let mut bad_padding = vec![0x01];
        encode_int(&mut bad_padding, 0x80, 7, 1);
        bad_padding.push(0b0001_1000); // 'a' padded with zeros
        type Case<'a> = (&'a str, Vec<u8>, Option<&'a [u8]>);
        let cases: Vec<Case<'_>> = vec![
            ("size update", valid(&[0x20]), None),
            ("dynamic name", dynamic_name, None),
            ("dynamic reference", dynamic_ref, None),
            (
                "indexed empty :authority",
                empty_authority,
                Some(b"localhost"),
            ),
            ("index 0", vec![0x80], None),
            ("string past the block", vec![0x01, 0x7f, b'a'], None),
            (
                "integer too large",
                vec![0x01, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f],
                None,
            ),
            ("bad Huffman padding", bad_padding, None),
        ];
        for (what, block, repaired) in cases {
            let (input, out, rw) = one_block(&block);
            assert_eq!(rw.full_decodes, 1, "{what}");
            match repaired {
                None => assert_eq!(out, input, "{what}"),
                Some(a) => assert_eq!(authority_of(&out), [a.to_vec()], "{what}"),
            }
        }

        // Valid, but split over CONTINUATION: the full decoder, which forwards it.
        let block = valid(&[]);
        let (a, b) = block.split_at(3);
        let mut input = PREFACE.to_vec();
        frame(
            &mut input,
            TYPE_HEADERS,
            FLAG_PADDED,
            1,
            &[&[2][..], a, &[0, 0]].concat(),
        );
        frame(&mut input, TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b);
        let mut rw = AuthorityRewriter::default();
        let out = feed_bounded(&mut rw, &input);
        assert_eq!((out == input, rw.full_decodes), (true, 1));

        // Padding and priority on a single HEADERS frame are the frame's, not the block's.
        let mut input = PREFACE.to_vec();
        let payload = [&[3][..], &[0, 0, 0, 0, 16], &block, &[0, 0, 0]].concat();
        frame(
            &mut input,
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS,
            1,
            &payload,
        );
        let mut rw = AuthorityRewriter::default();
        let out = feed_bounded(&mut rw, &input);
        assert_eq!((out == input, rw.full_decodes), (true, 0));
    }

    /// Whatever the scan vouches for, the full decoder agrees has no invalid
    /// `:authority`: over every representation of a few names and values.
    #[test]
    fn the_scan_never_vouches_for_a_block_the_decoder_would_repair() {
        let names: [&[u8]; 4] = [b":authority", b":path", b":authorit", b"x"];
        let values: [&[u8]; 5] = [b"localhost", b"%2Fx", b"", b"a b", b"host:1"];
        let mut checked = 0;
        for name in names {
            for value in values {
                for first in [0x00u8, 0x10, 0x40] {
                    for (name_huffman, value_huffman) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        let mut block = vec![first];
                        if name_huffman {
                            encode_huffman(&mut block, name);
                        } else {
                            encode_string(&mut block, name);
                        }
                        if value_huffman {
                            encode_huffman(&mut block, value);
                        } else {
                            encode_string(&mut block, value);
                        }
                        request_fields(&mut block);
                        let vouched = scan::authorities_valid(&block, valid_authority);
                        let fields = loona_hpack::Decoder::new().decode(&block).unwrap();
                        let repair = fields
                            .iter()
                            .any(|(n, v)| n == b":authority" && !valid_authority(v));
                        assert_eq!(vouched, !repair, "{name:?} {value:?} {first:#x}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 5 * 3 * 4);
    }
}
