//! The Workload API's accept loop: who may hold how many connections, and what happens
//! when the agent runs short of file descriptors.
//!
//! Any local user may connect to the socket, before anything is attested, so what one user
//! can make the agent hold must be bounded by the kernel's view of them, not by anything
//! they send:
//!
//! 1. At accept, the peer's uid is read from the socket (SO_PEERCRED, as attestation does).
//!    A connection whose credentials cannot be read is closed.
//! 2. A connection takes a slot from [`Slots`]: at most `max_connections_per_uid` for its
//!    uid and `max_connections` in all (by default below the open-file limit, so that the
//!    agent never reaches it through the socket). Over either cap the connection is closed
//!    at once, and the refusal logged at warn, naming the uid, at most once per
//!    [`LOG_EVERY`] with the count of those not logged, so a flood cannot flood the log.
//! 3. The slot is released when the connection is dropped (the [`Slot`] guard lives in the
//!    [`Connection`] the HTTP/2 stack owns), so a closed connection frees its place at
//!    once; [`Connection`] also closes connections that send no request within the
//!    handshake timeout or stay idle past the idle timeout.
//! 4. An accept that fails for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM: the
//!    pending connection stays queued and the listener stays readable) is retried after a
//!    pause of 10 ms doubling to 1 s ([`AcceptBackoff`]), not at once: retrying at once
//!    spins a core for as long as the shortage lasts. Errors that concern only the
//!    connection being accepted (it was aborted or reset meanwhile) are retried at once.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::Stream;
use tokio::net::UnixListener;
use tokio::time::Instant;

use super::connection::{Connection, Timeouts};
use crate::config::WorkloadApiLimits;

/// First pause after an accept failed for lack of resources.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accepts while they keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this period for refused connections, and one for failed
/// accepts.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SlotRefusal {
    /// Its uid already holds as many connections as one uid may.
    #[error("uid {uid} already holds {held} Workload API connections, the most one uid may")]
    PerUid {
        /// The peer's uid.
        uid: u32,
        /// Connections it holds.
        held: u32,
    },
    /// The agent already holds as many connections as it may in all.
    #[error("the agent already holds {held} Workload API connections, the most it may")]
    Total {
        /// Connections held in all.
        held: u32,
    },
}

#[derive(Debug)]
struct SlotTable {
    max_total: u32,
    max_per_uid: u32,
    total: u32,
    /// Connections held per uid; a uid with none has no entry, so the map is bounded by
    /// the connections held.
    by_uid: HashMap<u32, u32>,
}

/// The connection slots of the Workload API: per uid and in all.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    table: Arc<Mutex<SlotTable>>,
}

/// One connection's place in [`Slots`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    table: Arc<Mutex<SlotTable>>,
    uid: u32,
}

impl Slots {
    /// Slots for at most `max_total` connections in all and `max_per_uid` per uid.
    pub(crate) fn new(max_total: u32, max_per_uid: u32) -> Self {
        Self {
            table: Arc::new(Mutex::new(SlotTable {
                max_total,
                max_per_uid,
                total: 0,
                by_uid: HashMap::new(),
            })),
        }
    }

    /// A slot for a connection from `uid`, unless a cap is reached.
    pub(crate) fn acquire(&self, uid: u32) -> Result<Slot, SlotRefusal> {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let held = t.by_uid.get(&uid).copied().unwrap_or(0);
        if held >= t.max_per_uid {
            return Err(SlotRefusal::PerUid { uid, held });
        }
        if t.total >= t.max_total {
            return Err(SlotRefusal::Total { held: t.total });
        }
        t.total += 1;
        *t.by_uid.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            table: Arc::clone(&self.table),
            uid,
        })
    }

    /// Connections held in all, and by `uid`.
    #[cfg(test)]
    fn held(&self, uid: u32) -> (u32, u32) {
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        (t.total, t.by_uid.get(&uid).copied().unwrap_or(0))
    }

    /// Uids holding at least one connection.
    #[cfg(test)]
    fn uids(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_uid
            .len()
    }
}

impl Slot {
    /// The uid the slot was given to.
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                t.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Pauses between accepts that fail for lack of resources: 10 ms doubling to 1 s, back to
/// 10 ms after an accept succeeds.
#[derive(Debug)]
pub(crate) struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            next: ACCEPT_BACKOFF_MIN,
        }
    }
}

impl AcceptBackoff {
    /// An accept failed: how long to wait before the next.
    pub(crate) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        wait
    }

    /// An accept succeeded.
    pub(crate) fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

/// Lets one log line through per period and counts those held back.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`: `Some(n)` with the number of lines held back
    /// since the last one logged, `None` when this one is held back too.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|l| now < l + self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Whether an accept error concerns only the connection being accepted (retry at once)
/// rather than the agent's resources (back off).
fn only_this_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || e.raw_os_error() == Some(rustix::io::Errno::PROTO.raw_os_error())
}

/// The accept loop's state.
#[derive(Debug)]
struct Acceptor {
    listener: UnixListener,
    slots: Slots,
    timeouts: Timeouts,
    backoff: AcceptBackoff,
    refusals: LogThrottle,
    failures: LogThrottle,
}

impl Acceptor {
    /// The next connection that gets a slot; refused ones are closed on the way.
    /// Cancellation-safe: a connection accepted is returned in the same poll.
    async fn next(&mut self) -> Connection {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => {
                    self.backoff.succeeded();
                    stream
                }
                Err(e) if only_this_connection(&e) => continue,
                Err(e) => {
                    let wait = self.backoff.failed();
                    if let Some(suppressed) = self.failures.admit(Instant::now()) {
                        tracing::warn!(
                            error = %e,
                            retry_in_ms = wait.as_millis() as u64,
                            suppressed,
                            "cannot accept Workload API connections; pausing accepts"
                        );
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let uid = match stream.peer_cred() {
                Ok(cred) => cred.uid(),
                Err(e) => {
                    tracing::debug!(error = %e, "closing a Workload API connection without peer credentials");
                    continue;
                }
            };
            match self.slots.acquire(uid) {
                Ok(slot) => return Connection::new(stream, slot, self.timeouts),
                Err(refusal) => {
                    // Dropping `stream` closes the connection.
                    if let Some(suppressed) = self.refusals.admit(Instant::now()) {
                        tracing::warn!(
                            uid,
                            reason = %refusal,
                            suppressed,
                            "closed a new Workload API connection over the connection limits \
                             (`suppressed`: refusals not logged since the last such line)"
                        );
                    }
                }
            }
        }
    }
}

/// The connections to serve on `listener` under `limits`, for the HTTP/2 server.
///
/// It yields no errors: refused connections are closed here and failed accepts retried
/// after a pause, since the server would retry an error at once.
pub(crate) fn incoming(
    listener: UnixListener,
    limits: &WorkloadApiLimits,
) -> impl Stream<Item = io::Result<Connection>> + use<> {
    let acceptor = Acceptor {
        listener,
        slots: Slots::new(limits.max_connections, limits.max_connections_per_uid),
        timeouts: Timeouts {
            handshake: limits.handshake_timeout,
            idle: limits.idle_timeout,
        },
        backoff: AcceptBackoff::default(),
        refusals: LogThrottle::new(LOG_EVERY),
        failures: LogThrottle::new(LOG_EVERY),
    };
    futures::stream::unfold(acceptor, |mut a| async move {
        let c = a.next().await;
        Some((Ok(c), a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_each_uid_and_the_total_and_come_back_when_dropped() {
        let slots = Slots::new(5, 2);
        let a1 = slots.acquire(1000).unwrap();
        let _a2 = slots.acquire(1000).unwrap();
        assert_eq!(
            slots.acquire(1000).unwrap_err(),
            SlotRefusal::PerUid { uid: 1000, held: 2 }
        );
        // Another uid is not affected by the first one's cap.
        let _b1 = slots.acquire(0).unwrap();
        let _b2 = slots.acquire(0).unwrap();
        let _c1 = slots.acquire(7).unwrap();
        assert_eq!(slots.held(1000), (5, 2));
        // The total is reached: a uid with room is refused too.
        assert_eq!(
            slots.acquire(8).unwrap_err(),
            SlotRefusal::Total { held: 5 }
        );
        drop(a1);
        assert_eq!(slots.held(1000), (4, 1));
        let _a3 = slots.acquire(1000).unwrap();
        assert_eq!(slots.held(1000), (5, 2));
    }

    #[test]
    fn uids_without_connections_are_forgotten() {
        let slots = Slots::new(1000, 10);
        let held: Vec<Slot> = (0..100).map(|uid| slots.acquire(uid).unwrap()).collect();
        assert_eq!(slots.uids(), 100);
        assert_eq!(held[42].uid(), 42);
        drop(held);
        assert_eq!(slots.uids(), 0);
        assert_eq!(slots.held(0), (0, 0));
    }

    #[test]
    fn slots_are_exact_under_concurrent_acquire_and_release() {
        let slots = Slots::new(64, 8);
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let slots = slots.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        let got: Vec<Slot> =
                            (0..16).filter_map(|_| slots.acquire(t % 4).ok()).collect();
                        assert!(got.len() <= 8);
                    }
                });
            }
        });
        assert_eq!(slots.held(0), (0, 0));
        assert_eq!(slots.uids(), 0);
    }

    #[test]
    fn accept_backoff_doubles_to_one_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let mut t = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.admit(start), Some(0));
        for i in 1..=1000 {
            assert_eq!(t.admit(start + Duration::from_millis(i)), None);
        }
        assert_eq!(t.admit(start + Duration::from_secs(10)), Some(1000));
        assert_eq!(t.admit(start + Duration::from_secs(11)), None);
        assert_eq!(t.admit(start + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn accept_errors_are_told_apart() {
        for errno in [
            rustix::io::Errno::MFILE,
            rustix::io::Errno::NFILE,
            rustix::io::Errno::NOBUFS,
            rustix::io::Errno::NOMEM,
        ] {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(!only_this_connection(&e), "{e}: back off");
        }
        for errno in [
            rustix::io::Errno::CONNABORTED,
            rustix::io::Errno::PROTO,
            rustix::io::Errno::INTR,
        ] {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(only_this_connection(&e), "{e}: retry at once");
        }
    }

    /// Set in the child process of the test below.
    const EMFILE_CHILD: &str = "TESSERA_TEST_ACCEPT_EMFILE_CHILD";

    /// CPU time of this process so far, in clock ticks (`utime` + `stime`), from its
    /// `/proc/self/stat` opened beforehand (no descriptor may be left to open it).
    fn cpu_ticks(stat: &mut std::fs::File) -> u64 {
        use std::io::{Read as _, Seek as _};
        stat.rewind().unwrap();
        let mut text = String::new();
        stat.read_to_string(&mut text).unwrap();
        let stat = text;
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// The process's open-file limit is lowered, so this runs in a child process (the test
    /// binary again, running only this test): other tests must not run out of files.
    #[tokio::test]
    async fn an_accept_failing_for_lack_of_descriptors_backs_off_instead_of_spinning() {
        use futures::StreamExt as _;
        const NAME: &str = "workload_api::listener::tests::an_accept_failing_for_lack_of_descriptors_backs_off_instead_of_spinning";
        if std::env::var_os(EMFILE_CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(EMFILE_CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            eprintln!("{text}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // A connection waits in the backlog; then every descriptor is taken.
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(256),
                maximum: limit.maximum,
            },
        )
        .unwrap();
        let mut files = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            files.push(f);
        }
        assert!(!files.is_empty());
        let mut incoming = Box::pin(incoming(listener, &limits(10, 10)));
        // Two seconds of accepts failing with EMFILE: a spinning loop would take all of them.
        let before = cpu_ticks(&mut stat);
        let accepted = tokio::time::timeout(Duration::from_secs(2), incoming.next()).await;
        let ticks = cpu_ticks(&mut stat) - before;
        assert!(accepted.is_err(), "accepted without a descriptor");
        eprintln!("{ticks} CPU ticks in 2 s of accepts failing with EMFILE");
        assert!(
            ticks <= 20,
            "{ticks} CPU ticks in 2 s: the accept loop spins"
        );
        // Descriptors free again: the waiting connection is accepted at the next try
        // (the pause is at most 1 s).
        files.truncate(files.len() - 8);
        let c = tokio::time::timeout(Duration::from_secs(3), incoming.next())
            .await
            .expect("accepted once descriptors are free")
            .unwrap()
            .unwrap();
        assert_eq!(c.slot_uid(), nix::unistd::getuid().as_raw());
    }

    fn limits(per_uid: u32, total: u32) -> WorkloadApiLimits {
        WorkloadApiLimits {
            max_connections: total,
            max_connections_per_uid: per_uid,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 32,
            max_request_bytes: 128 * 1024,
        }
    }

    /// Whether the acceptor closed `s`: a read returns end of stream within `within`.
    async fn closed(s: &mut tokio::net::UnixStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt as _;
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn connections_over_the_caps_are_closed_at_once_and_their_slots_come_back() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut incoming = Box::pin(incoming(listener, &limits(3, 100)));
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::UnixStream::connect(&path).await.unwrap());
            served.push(incoming.next().await.unwrap().unwrap());
        }
        // This process's uid holds 3: the next 5 are closed by the acceptor.
        let mut refused = Vec::new();
        for _ in 0..5 {
            refused.push(tokio::net::UnixStream::connect(&path).await.unwrap());
        }
        let acceptor = tokio::spawn(async move {
            let c = incoming.next().await.unwrap().unwrap();
            (c, incoming)
        });
        for s in &mut refused {
            assert!(
                closed(s, Duration::from_secs(5)).await,
                "a connection over the per-uid cap stayed open"
            );
        }
        for s in &mut clients {
            assert!(
                !closed(s, Duration::from_millis(100)).await,
                "a connection within the cap was closed"
            );
        }
        // One served connection ends: its slot lets the next one in.
        drop(served.pop());
        let late = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (c, _incoming) = tokio::time::timeout(Duration::from_secs(5), acceptor)
            .await
            .expect("a freed slot is given to the next connection")
            .unwrap();
        assert_eq!(c.slot_uid(), nix::unistd::getuid().as_raw());
        drop(late);
    }
}
