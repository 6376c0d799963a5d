//! One accepted Workload API connection: its slot, and the timeouts that close it.
//!
//! - **Handshake timeout.** A connection must bring its first request's headers to the
//!   services within the handshake timeout of being accepted, or it is closed: one that
//!   sends nothing, half the preface, or only settings and pings holds a slot for no
//!   purpose.
//! - **Idle timeout.** After that, a connection with no open stream on which the peer has
//!   sent nothing for the idle timeout is closed. An open stream is never cut, however
//!   long it lasts: `FetchX509SVID` and the other watches live as long as their workload.
//!
//! The HTTP/2 stack cannot say when a request arrives or a stream ends, so the services are
//! wrapped in [`StreamTrackingLayer`]: it counts each request on its connection (found
//! through the request's [`ConnectionInfo`]) from its arrival until its response body is
//! dropped, which the stack does when the stream ends or is reset. The connection checks
//! its deadline whenever a read or write would wait, and closes by failing that read or
//! write: the stack then drops the connection, and with it the socket and the slot.
//!
//! HTTP/2 keepalive pings are not used: on a Unix socket the kernel reports a dead peer at
//! once, and a live client answers pings, so pings would keep idle connections open.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::authority::RepairedStream;
use super::listener::Slot;
use crate::attestation::Accepted;

/// The two timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From accept to the first request.
    pub(crate) handshake: Duration,
    /// Silence allowed with no open stream.
    pub(crate) idle: Duration,
}

/// What the services tell a connection: requests seen and open.
#[derive(Debug, Default)]
struct Streams {
    /// Requests that reached the services.
    seen: u64,
    /// Requests whose response has not ended.
    open: u64,
    /// When the last open stream ended.
    last_end: Option<Instant>,
}

/// Connection info of a Workload API request: the peer as the kernel reported it, and the
/// connection's stream count.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    /// Peer address and credentials (SO_PEERCRED) captured at accept.
    pub(crate) uds: UdsConnectInfo,
    /// The peer's process as it was at accept, and its `/proc` directory opened then
    /// (`None`: it could not be read, e.g. it had already exited); attestation requires
    /// the process to be unchanged.
    pub(crate) at_accept: Option<Accepted>,
    streams: Arc<Mutex<Streams>>,
}

impl ConnectionInfo {
    /// Counts a request as open until the returned guard is dropped.
    fn stream_started(&self) -> StreamGuard {
        let mut s = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        s.seen += 1;
        s.open += 1;
        StreamGuard {
            streams: Arc::clone(&self.streams),
        }
    }
}

/// An open stream of a connection; dropped when its response ends.
#[derive(Debug)]
struct StreamGuard {
    streams: Arc<Mutex<Streams>>,
}

impl Drop for StreamGuard {
    /// Wakes nothing: while a stream is open, the connection's timer is never later than
    /// an idle deadline could be (see [`Connection::expired`]).
    fn drop(&mut self) {
        let mut s = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        s.open = s.open.saturating_sub(1);
        s.last_end = Some(Instant::now());
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Handshake,
    Idle,
}

/// Whether a connection accepted at `accepted`, last read from at `last_read`, with
/// `streams`, is over its time at `now`: why it is, or else its deadline (`None` while a
/// stream is open: no deadline until it ends).
fn check(
    now: Instant,
    accepted: Instant,
    last_read: Instant,
    streams: &Streams,
    t: Timeouts,
) -> Result<Option<Instant>, Expiry> {
    if streams.seen == 0 {
        let end = accepted + t.handshake;
        return if now >= end {
            Err(Expiry::Handshake)
        } else {
            Ok(Some(end))
        };
    }
    if streams.open > 0 {
        return Ok(None);
    }
    let since = streams.last_end.map_or(last_read, |e| e.max(last_read));
    let end = since + t.idle;
    if now >= end {
        Err(Expiry::Idle)
    } else {
        Ok(Some(end))
    }
}

/// An accepted Workload API connection: the `:authority` repair over the socket, its slot,
/// and its timeouts.
pub(crate) struct Connection {
    inner: RepairedStream,
    info: ConnectionInfo,
    timeouts: Timeouts,
    accepted: Instant,
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
    slot: Slot,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("uid", &self.slot.uid())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Wraps an accepted socket that was given `slot`.
    pub(crate) fn new(stream: UnixStream, slot: Slot, timeouts: Timeouts) -> Self {
        let inner = RepairedStream::new(stream);
        let now = Instant::now();
        let uds = inner.connect_info();
        let at_accept = uds
            .peer_cred
            .and_then(|c| c.pid())
            .filter(|pid| *pid > 0)
            .and_then(|pid| Accepted::capture(pid).ok());
        tracing::debug!(at_accept = ?at_accept.as_ref().map(|a| a.process), "Workload API connection accepted");
        Self {
            info: ConnectionInfo {
                at_accept,
                uds,
                streams: Arc::default(),
            },
            inner,
            timeouts,
            accepted: now,
            last_read: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.handshake)),
            slot,
        }
    }

    /// The uid the connection's slot was given to.
    #[cfg(test)]
    pub(crate) fn slot_uid(&self) -> u32 {
        self.slot.uid()
    }

    /// Called when a read or write would wait: the error that closes the connection if it
    /// is over its time; otherwise the timer is armed for its deadline, and the task is
    /// left to be woken by the timer or by the end of the last open stream.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            let now = Instant::now();
            let verdict = {
                let streams = self
                    .info
                    .streams
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                check(now, self.accepted, self.last_read, &streams, self.timeouts)
            };
            match verdict {
                Ok(Some(deadline)) => {
                    if self.timer.deadline() != deadline {
                        self.timer.as_mut().reset(deadline);
                    }
                }
                // A stream is open: no deadline yet. The last stream to end wakes nothing
                // (a wake-up per request for a deadline minutes away), so the timer is
                // kept no later than `now + idle`: any stream ends after `now`, so the
                // idle deadline it starts is never sooner, and when the timer fires the
                // check above finds the deadline as it is then. While streams stay open,
                // that is one wake-up per idle timeout.
                Ok(None) => {
                    let latest = now + self.timeouts.idle;
                    if self.timer.is_elapsed() || self.timer.deadline() > latest {
                        self.timer.as_mut().reset(latest);
                    }
                }
                Err(why) => {
                    let (message, after) = match why {
                        Expiry::Handshake => ("no request within", self.timeouts.handshake),
                        Expiry::Idle => ("no stream and nothing received for", self.timeouts.idle),
                    };
                    tracing::debug!(
                        uid = self.slot.uid(),
                        "closing a Workload API connection: {message} {after:?}"
                    );
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("Workload API connection closed: {message} {after:?}"),
                    ));
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            if buf.filled().len() > before {
                this.last_read = Instant::now();
            }
            return Poll::Ready(r);
        }
        match this.expired(cx) {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // A peer that stops reading stalls the stack's writes, and with them its reads:
        // the deadline is checked here too.
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Pending => this
                .expired(cx)
                .map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this
                .expired(cx)
                .map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this
                .expired(cx)
                .map_or(Poll::Pending, |e| Poll::Ready(Err(e))),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Counts each Workload API request as an open stream of its connection, from its arrival
/// at the services until its response body is dropped (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamTrackingLayer;

impl<S> tower::Layer<S> for StreamTrackingLayer {
    type Service = StreamTracking<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamTracking { inner }
    }
}

/// See [`StreamTrackingLayer`].
#[derive(Debug, Clone)]
pub(crate) struct StreamTracking<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for StreamTracking<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req
            .extensions()
            .get::<ConnectionInfo>()
            .map(ConnectionInfo::stream_started);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => {
                    response.map(|body| tonic::body::Body::new(GuardedBody::new(body, guard)))
                }
                None => response,
            })
        })
    }
}

/// A response body that keeps `G` alive until the body is dropped: the stream is counted
/// open ([`StreamGuard`]), or a request gauge held up (`metrics.rs`), for exactly as long
/// as the response is being sent. Everything else is forwarded to the inner body.
#[derive(Debug)]
pub(crate) struct GuardedBody<G> {
    inner: tonic::body::Body,
    _guard: G,
}

impl<G> GuardedBody<G> {
    /// Wraps `inner`, holding `guard` until the body is dropped.
    pub(crate) fn new(inner: tonic::body::Body, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::workload_api::listener::Slots;

    const T: Timeouts = Timeouts {
        handshake: Duration::from_secs(10),
        idle: Duration::from_secs(300),
    };

    #[tokio::test(start_paused = true)]
    async fn the_deadline_follows_requests_streams_and_reads() {
        let t0 = Instant::now();
        let s = |seen, open, last_end: Option<u64>| Streams {
            seen,
            open,
            last_end: last_end.map(|e| t0 + Duration::from_secs(e)),
        };
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // Before the first request: the handshake deadline, whatever is read.
        assert_eq!(check(at(5), t0, at(5), &s(0, 0, None), T), Ok(Some(at(10))));
        assert_eq!(
            check(at(10), t0, at(9), &s(0, 0, None), T),
            Err(Expiry::Handshake)
        );
        // A request in flight (or a stream open) holds the connection open for good.
        assert_eq!(check(at(10), t0, at(1), &s(1, 1, None), T), Ok(None));
        assert_eq!(
            check(at(100_000), t0, at(1), &s(5, 1, Some(2)), T),
            Ok(None)
        );
        // With no stream open: idle from the later of the last read and the last stream end.
        assert_eq!(
            check(at(20), t0, at(8), &s(1, 0, Some(9)), T),
            Ok(Some(at(309)))
        );
        assert_eq!(
            check(at(20), t0, at(12), &s(1, 0, Some(9)), T),
            Ok(Some(at(312)))
        );
        assert_eq!(
            check(at(312), t0, at(12), &s(1, 0, Some(9)), T),
            Err(Expiry::Idle)
        );
    }

    /// A served connection (as the acceptor makes it) and the client's end.
    fn pair(slots: &Slots) -> (Connection, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        let slot = slots.acquire(1).unwrap();
        (Connection::new(server, slot, T), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_closed_at_the_handshake_timeout() {
        let slots = Slots::new(10, 10);
        let (mut conn, mut client) = pair(&slots);
        // Half the preface, then nothing.
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 16);
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("no request within 10s"), "{err}");
        assert_eq!(start.elapsed(), T.handshake);
        // Dropping the connection gives back its slot and closes the socket.
        drop(conn);
        assert!(slots.acquire(1).is_ok());
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_is_never_idle_and_its_end_starts_the_idle_timeout() {
        let slots = Slots::new(10, 10);
        let (mut conn, _client) = pair(&slots);
        let guard = conn.info.stream_started();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let reader = async {
            let r = conn.read(&mut buf).await;
            (r.map(|_| ()), conn)
        };
        let ((r, _conn), ()) = tokio::join!(reader, async {
            // A day with the stream open and not a byte: still open.
            tokio::time::sleep(Duration::from_secs(86_400)).await;
            drop(guard);
        });
        let err = r.unwrap_err();
        assert!(
            err.to_string()
                .contains("no stream and nothing received for 300s"),
            "{err}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(86_400) + T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_last_stream_brings_the_idle_deadline_forward() {
        let slots = Slots::new(10, 10);
        let (server, _client) = UnixStream::pair().unwrap();
        let short_idle = Timeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(3),
        };
        let mut conn = Connection::new(server, slots.acquire(1).unwrap(), short_idle);
        let guard = conn.info.stream_started();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let ((r, _conn), ()) = tokio::join!(
            async {
                let r = conn.read(&mut buf).await;
                (r.map(|_| ()), conn)
            },
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(guard);
            }
        );
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // Not at the handshake deadline (10 s) the timer was armed for.
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_from_the_peer_hold_an_idle_connection_open() {
        let slots = Slots::new(10, 10);
        let (mut conn, mut client) = pair(&slots);
        drop(conn.info.stream_started());
        let start = Instant::now();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(200)).await;
            client.write_all(b"ping").await.unwrap();
            assert_eq!(conn.read(&mut buf).await.unwrap(), 4);
        }
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(600) + T.idle);
    }
}
