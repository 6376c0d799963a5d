//! Reads the kernel's view of one process from procfs, pinned to one process instance.
//!
//! This is the only module in the agent that touches `/proc`. It offers four handles and a
//! few pure parsers:
//!
//! - [`ProcDir`] holds an open directory fd on `/proc/<pid>` and reads `stat`, `status` and
//!   `exe` *relative to that fd*. Opening `/proc/<pid>` binds the fd to the kernel's
//!   `struct pid` of the process that had that number at open time, not to the number: once
//!   that process is reaped, every later lookup through the fd fails with `ESRCH`, even if
//!   the number has meanwhile been given to a new process. Reads through a held fd therefore
//!   either describe the process we first saw or fail; they can never silently switch to a
//!   process that recycled the pid.
//! - [`PinnedProc`] is a [`ProcDir`] held for the life of a Workload API connection, with
//!   `status` and `cgroup` opened through it once and read again from offset 0 (`pread`),
//!   so that each later check of the same caller makes no open at all.
//! - [`PidFd`] is a pidfd for the same pid, a second, independent pin. Its liveness check
//!   reads the pidfd's `fdinfo`, where the kernel prints `Pid: -1` once the process is gone.
//! - [`FileId`] is the identity of the executable file (`fstat` of the opened
//!   `/proc/<pid>/exe`), used to detect an `exec` during attestation and as the hash-cache key.
//!
//! The parsers ([`parse_stat_start_time`], [`parse_status`], [`parse_fdinfo_pid`]) take the
//! file contents as `&str` so they are unit-tested without a live process. Most of those
//! contents are written by the kernel, but `stat` contains the command name (`comm`), which
//! the process chooses itself (`prctl(PR_SET_NAME)`, or the name of the file it ran). The
//! parsers treat it as hostile input.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};
use sha2::{Digest, Sha256};

use super::AttestationError;

/// Largest procfs text file we accept. `stat` is a few hundred bytes and `status` a couple
/// of KiB. The exception is the `Groups:` line, which can list up to 65536 supplementary
/// groups (NGROUPS_MAX), at most 11 bytes each ("4294967295 "), about 704 KiB. A larger
/// file is an error, never truncated: truncating could cut a gid in half and attest a
/// group the process is not in.
const MAX_PROC_FILE: u64 = 1 << 20;

/// How much of the executable is read into memory at a time while hashing.
const HASH_CHUNK: usize = 64 * 1024;

/// The kernel appends this to the `/proc/<pid>/exe` link target when the file was unlinked
/// (see `d_path()` in fs/d_path.c).
const DELETED_SUFFIX: &[u8] = b" (deleted)";

/// How long ago a file's ctime must be before its hash may be cached. See [`FileId::settled`].
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Why procfs content could not be parsed. These are errors, not panics: `stat` embeds a
/// command name the process picked, and a kernel we never tested may format things
/// differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProcfsParseError {
    /// `stat` has no command name in parentheses (no `(`, or no `)` after it).
    #[error("no parenthesised command name")]
    NoComm,
    /// A required field or line is absent (`stat` too short, `status` without `Uid:`, ...).
    #[error("missing field {field}")]
    MissingField {
        /// Which field.
        field: &'static str,
    },
    /// A field that must be a decimal integer is not one, or is out of range.
    #[error("field {field} is not a valid number")]
    InvalidNumber {
        /// Which field.
        field: &'static str,
    },
    /// A `status` id line (`Uid:`/`Gid:`) does not hold exactly four ids (real, effective,
    /// saved, filesystem).
    #[error("field {field} does not hold four ids")]
    WrongIdCount {
        /// Which field.
        field: &'static str,
    },
    /// A `status` line we rely on appears twice, so it is unclear which one the kernel meant.
    #[error("field {field} appears more than once")]
    DuplicateField {
        /// Which field.
        field: &'static str,
    },
    /// The file is larger than [`MAX_PROC_FILE`].
    #[error("file too large")]
    TooLarge,
    /// `cgroup` is not what the kernel writes; carries what is wrong.
    #[error("cgroup file: {0}")]
    Cgroup(&'static str),
}

/// Turns an I/O error from a procfs read into an attestation error. `ESRCH` and `ENOENT`
/// both mean the process we pinned is gone (reaped or a zombie without `exe`), or is a
/// kernel thread without an executable. None of those can be a live caller.
pub(crate) fn io_error(pid: i32, what: &'static str, error: io::Error) -> AttestationError {
    match error.raw_os_error() {
        Some(code) if code == Errno::SRCH.raw_os_error() || code == Errno::NOENT.raw_os_error() => {
            AttestationError::ProcessExited { pid }
        }
        _ => AttestationError::Proc {
            pid,
            what,
            source: Arc::new(error),
        },
    }
}

/// Reads a procfs text file without truncating it (see [`MAX_PROC_FILE`]).
///
/// Invalid UTF-8 is replaced rather than rejected. Only the command name (in `stat` and
/// in `status`'s `Name:` line) can hold arbitrary bytes, and we parse neither.
fn read_text(file: impl Read, pid: i32, what: &'static str) -> Result<String, AttestationError> {
    // Room for the usual file at once: one read and the one that sees its end.
    let mut bytes = Vec::with_capacity(4096);
    file.take(MAX_PROC_FILE.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(pid, what, e))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_PROC_FILE {
        return Err(AttestationError::Malformed {
            pid,
            what,
            source: ProcfsParseError::TooLarge,
        });
    }
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// [`parse_status`] and [`parse_status_ppid`] of the `status` text of `pid`.
fn status_and_ppid(text: &str, pid: i32) -> Result<(Status, u32), AttestationError> {
    let malformed = |source| AttestationError::Malformed {
        pid,
        what: "status",
        source,
    };
    Ok((
        parse_status(text).map_err(malformed)?,
        parse_status_ppid(text).map_err(malformed)?,
    ))
}

/// An open `/proc/<pid>` directory: every read goes to the process instance that owned the
/// pid when this was opened, or fails (see the module docs).
#[derive(Debug)]
pub(crate) struct ProcDir {
    pid: i32,
    dir: OwnedFd,
}

/// Where `/proc/<pid>/exe` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExeLink {
    /// An absolute path that still named the running file when we looked.
    Path(PathBuf),
    /// The file was unlinked (the kernel appended `" (deleted)"`), or the target is not an
    /// absolute path (for example a `memfd:` executable). No path names what runs.
    Detached,
}

impl ProcDir {
    /// Opens `/proc/<pid>`. This is the pin: call it before reading anything else.
    pub(crate) fn open(pid: i32) -> Result<Self, AttestationError> {
        let dir = rustix::fs::open(
            format!("/proc/{pid}"),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error(pid, "proc directory", e.into()))?;
        Ok(Self { pid, dir })
    }

    /// Opens a file inside the pinned directory.
    fn open_at(&self, name: &'static str) -> Result<File, AttestationError> {
        rustix::fs::openat(
            &self.dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| io_error(self.pid, name, e.into()))
    }

    /// The process start time (field 22 of `stat`, clock ticks since boot). A pid can be
    /// reused, but no other process has this (pid, start time) pair while this one lives.
    pub(crate) fn start_time(&self) -> Result<u64, AttestationError> {
        let text = read_text(self.open_at("stat")?, self.pid, "stat")?;
        parse_stat_start_time(&text).map_err(|source| AttestationError::Malformed {
            pid: self.pid,
            what: "stat",
            source,
        })
    }

    /// The start time and parent pid, from one read of `stat`.
    pub(crate) fn start_time_and_ppid(&self) -> Result<(u64, u32), AttestationError> {
        let text = read_text(self.open_at("stat")?, self.pid, "stat")?;
        let malformed = |source| AttestationError::Malformed {
            pid: self.pid,
            what: "stat",
            source,
        };
        Ok((
            parse_stat_start_time(&text).map_err(malformed)?,
            parse_stat_ppid(&text).map_err(malformed)?,
        ))
    }

    /// The text of `cgroup`.
    pub(crate) fn cgroup(&self) -> Result<String, AttestationError> {
        read_text(self.open_at("cgroup")?, self.pid, "cgroup")
    }

    /// Uid, gid and supplementary groups from `status`.
    pub(crate) fn status(&self) -> Result<Status, AttestationError> {
        let text = read_text(self.open_at("status")?, self.pid, "status")?;
        parse_status(&text).map_err(|source| AttestationError::Malformed {
            pid: self.pid,
            what: "status",
            source,
        })
    }

    /// The pid this directory was opened for.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Opens the file the process is running. Opening `exe` follows the kernel's reference
    /// to the executed file itself, not the path it was run from, so this is the very file
    /// even if the path was since replaced or unlinked.
    pub(crate) fn open_exe(&self) -> Result<(File, FileId), AttestationError> {
        let file = self.open_at("exe")?;
        let id = FileId::of(&file).map_err(|e| io_error(self.pid, "exe", e))?;
        Ok((file, id))
    }

    /// Identity of the file the process runs *now*. Compare it with [`Self::open_exe`]'s to
    /// detect an `exec` in between. One `stat` of `exe` through the pinned directory: like
    /// opening it, it follows the kernel's reference to the executed file itself.
    pub(crate) fn exe_id(&self) -> Result<FileId, AttestationError> {
        let stat = rustix::fs::statat(&self.dir, "exe", AtFlags::empty())
            .map_err(|e| io_error(self.pid, "exe", e.into()))?;
        FileId::of_stat(&stat).map_err(|e| io_error(self.pid, "exe", e))
    }

    /// Where the `exe` link points.
    pub(crate) fn exe_link(&self) -> Result<ExeLink, AttestationError> {
        let target = rustix::fs::readlinkat(&self.dir, "exe", Vec::new())
            .map_err(|e| io_error(self.pid, "exe link", e.into()))?
            .into_bytes();
        // A real file whose name ends in " (deleted)" also lands here. Omitting its path is
        // the safe direction: fewer selectors can only match fewer entries.
        if target.ends_with(DELETED_SUFFIX) || !target.starts_with(b"/") {
            return Ok(ExeLink::Detached);
        }
        Ok(ExeLink::Path(PathBuf::from(OsString::from_vec(target))))
    }
}

/// A file of a pinned directory read from its start with `pread` ([`FileExt::read_at`]),
/// so that one open file can be read again and again: procfs generates the text afresh
/// for every read at offset 0.
struct FromStart<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for FromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset = self
            .offset
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(n)
    }
}

/// A caller's `/proc/<pid>` directory held for as long as its connection, with the two
/// files every later check of that caller reads (`status`, and `cgroup` when the cgroup
/// attestor runs) kept open once first read: each check then costs reads, not opens (on
/// the development machine an open and close of `status` cost 5 µs of its 12 µs read,
/// and of `cgroup` 3 of 6.6).
///
/// The files are opened through the pinned directory, so they are pinned the same way:
/// reading them gives the text of the process instance the directory was opened for, or
/// fails once it is reaped. Each is read under its own lock, whole and from offset 0, so
/// that two requests of one connection never interleave their reads of one file.
#[derive(Debug)]
pub(crate) struct PinnedProc {
    dir: ProcDir,
    status: Mutex<Option<File>>,
    cgroup: Mutex<Option<File>>,
}

impl PinnedProc {
    /// Pins `dir`; its files are opened when first read.
    pub(crate) fn new(dir: ProcDir) -> Self {
        Self {
            dir,
            status: Mutex::default(),
            cgroup: Mutex::default(),
        }
    }

    /// The directory, for the reads that are not kept open.
    pub(crate) fn dir(&self) -> &ProcDir {
        &self.dir
    }

    /// The text of `name`, through the file kept in `slot` (opened on first use).
    fn read(
        &self,
        slot: &Mutex<Option<File>>,
        name: &'static str,
    ) -> Result<String, AttestationError> {
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let file = match &mut *held {
            Some(file) => file,
            none => none.insert(self.dir.open_at(name)?),
        };
        read_text(FromStart { file, offset: 0 }, self.dir.pid, name)
    }

    /// Uid, gid and supplementary groups, and the parent pid, from one read of the kept
    /// `status`.
    pub(crate) fn status_and_ppid(&self) -> Result<(Status, u32), AttestationError> {
        let text = self.read(&self.status, "status")?;
        status_and_ppid(&text, self.dir.pid)
    }

    /// As [`ProcDir::cgroup`], through the kept `cgroup`.
    pub(crate) fn cgroup(&self) -> Result<String, AttestationError> {
        self.read(&self.cgroup, "cgroup")
    }
}

/// A pidfd: a file descriptor that refers to one process instance and never to a later
/// process that reuses its number.
#[derive(Debug)]
pub(crate) struct PidFd {
    pid: i32,
    fd: OwnedFd,
}

impl PidFd {
    /// Opens a pidfd for `pid`. Returns `Ok(None)` when the kernel has no `pidfd_open`
    /// (before Linux 5.3: `ENOSYS`) or a seccomp filter blocks it (commonly `EPERM` in
    /// containers). The caller then relies on the [`ProcDir`] pin and the start-time check,
    /// which are enough on their own; the pidfd is defence in depth.
    pub(crate) fn open(pid: i32) -> Result<Option<Self>, AttestationError> {
        // `Pid::from_raw` debug-asserts a non-negative argument, so check the sign first.
        if pid <= 0 {
            return Err(AttestationError::NoPid);
        }
        let Some(raw) = Pid::from_raw(pid) else {
            return Err(AttestationError::NoPid);
        };
        match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => Ok(Some(Self { pid, fd })),
            Err(Errno::NOSYS | Errno::PERM) => Ok(None),
            Err(e) => Err(io_error(pid, "pidfd", e.into())),
        }
    }

    /// Fails with [`AttestationError::ProcessExited`] if the process has exited and been
    /// reaped.
    ///
    /// rustix's `pidfd_send_signal` takes a non-zero `Signal`, so the usual "signal 0"
    /// probe cannot be written with it, and polling the pidfd would need rustix's `event`
    /// feature. Instead we read the pidfd's `/proc/self/fdinfo` entry: its `Pid:` line is
    /// the pid in our namespace while the process exists, and `-1` once it has been reaped.
    /// Older kernels keep printing the stale number after the reap. That makes this check a
    /// no-op there, but it is never wrong, and the `ProcDir` re-read still catches the reap.
    /// A zombie still counts as alive here. It also still holds its pid, so the number
    /// cannot have been reused, and the `exe` re-check fails for it anyway.
    pub(crate) fn check_alive(&self) -> Result<(), AttestationError> {
        let what = "pidfd fdinfo";
        let path = format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd());
        let file = File::open(path).map_err(|e| AttestationError::Proc {
            pid: self.pid,
            what,
            source: Arc::new(e),
        })?;
        let text = read_text(file, self.pid, what)?;
        let shown = parse_fdinfo_pid(&text).map_err(|source| AttestationError::Malformed {
            pid: self.pid,
            what,
            source,
        })?;
        if shown == self.pid {
            Ok(())
        } else if shown == -1 {
            Err(AttestationError::ProcessExited { pid: self.pid })
        } else {
            // The pidfd's process is not the one the number names in our namespace.
            Err(AttestationError::PidReused { pid: self.pid })
        }
    }
}

impl PidFd {
    /// The pidfd itself: it becomes readable when the process exits (`poll(2)` on a pidfd,
    /// Linux 5.3 on), which is how the agent waits for a bound process to exit.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// The four ids of a `Uid:` or `Gid:` line, in the kernel's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ids {
    /// Real.
    pub(crate) real: u32,
    /// Effective (what permission checks and `SO_PEERCRED` use).
    pub(crate) effective: u32,
    /// Saved set-id.
    pub(crate) saved: u32,
    /// Filesystem.
    pub(crate) fs: u32,
}

impl Ids {
    /// The first of the four ids that is not `id`, named, if any.
    pub(crate) fn first_other_than(&self, id: u32) -> Option<(&'static str, u32)> {
        [
            ("real", self.real),
            ("effective", self.effective),
            ("saved", self.saved),
            ("filesystem", self.fs),
        ]
        .into_iter()
        .find(|&(_, v)| v != id)
    }
}

/// What we use from `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// The `Uid:` line.
    pub(crate) uid: Ids,
    /// The `Gid:` line.
    pub(crate) gid: Ids,
    /// Supplementary groups (`Groups:`), in kernel order.
    pub(crate) groups: Vec<u32>,
}

/// Parses the start time (field 22) out of a `/proc/<pid>/stat` line.
///
/// Field 2 (`comm`) is the command name in parentheses. The process chooses it and it may
/// contain spaces, `(`, `)` and even newlines, so a whitespace split from the start is
/// wrong. Every field after `comm` is a number or a single state letter, so the *last* `)`
/// in the line is the one that closes `comm`. The fields after it start at field 3, which
/// puts field 22 at index 19.
pub(crate) fn parse_stat_start_time(stat: &str) -> Result<u64, ProcfsParseError> {
    const FIELD: &str = "starttime";
    let (head, rest) = stat.rsplit_once(')').ok_or(ProcfsParseError::NoComm)?;
    if !head.contains('(') {
        return Err(ProcfsParseError::NoComm);
    }
    let value = rest
        .split_ascii_whitespace()
        .nth(22 - 3)
        .ok_or(ProcfsParseError::MissingField { field: FIELD })?;
    parse_decimal(value, FIELD)
}

/// Parses the parent pid (field 4) out of a `/proc/<pid>/stat` line; as
/// [`parse_stat_start_time`], from the last `)` on (field 4 is at index 1 after it). 0 for
/// a process without a parent in our pid namespace.
pub(crate) fn parse_stat_ppid(stat: &str) -> Result<u32, ProcfsParseError> {
    const FIELD: &str = "ppid";
    let (head, rest) = stat.rsplit_once(')').ok_or(ProcfsParseError::NoComm)?;
    if !head.contains('(') {
        return Err(ProcfsParseError::NoComm);
    }
    let value = rest
        .split_ascii_whitespace()
        .nth(4 - 3)
        .ok_or(ProcfsParseError::MissingField { field: FIELD })?;
    parse_decimal(value, FIELD)
}

/// Parses `Uid:`, `Gid:` and `Groups:` out of `/proc/<pid>/status`.
///
/// The only process-controlled text in `status` is `Name:`. The kernel escapes newlines
/// in it, so a process cannot inject a second `Uid:` line. We still reject duplicates
/// rather than pick one.
pub(crate) fn parse_status(status: &str) -> Result<Status, ProcfsParseError> {
    let mut uid = None;
    let mut gid = None;
    let mut groups = None;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Uid" => set_once(&mut uid, "Uid", parse_ids(value, "Uid")?)?,
            "Gid" => set_once(&mut gid, "Gid", parse_ids(value, "Gid")?)?,
            "Groups" => set_once(&mut groups, "Groups", parse_id_list(value, "Groups")?)?,
            _ => {}
        }
    }
    Ok(Status {
        uid: uid.ok_or(ProcfsParseError::MissingField { field: "Uid" })?,
        gid: gid.ok_or(ProcfsParseError::MissingField { field: "Gid" })?,
        groups: groups.ok_or(ProcfsParseError::MissingField { field: "Groups" })?,
    })
}

/// Parses the `PPid:` line of `/proc/<pid>/status`: the parent pid, as field 4 of `stat`
/// gives it ([`parse_stat_ppid`]); 0 for a process without a parent in our pid namespace.
pub(crate) fn parse_status_ppid(status: &str) -> Result<u32, ProcfsParseError> {
    const FIELD: &str = "PPid";
    let mut ppid = None;
    for value in status.lines().filter_map(|line| line.strip_prefix("PPid:")) {
        set_once(&mut ppid, FIELD, parse_decimal(value.trim(), FIELD)?)?;
    }
    ppid.ok_or(ProcfsParseError::MissingField { field: FIELD })
}

/// Parses the `Pid:` line of a pidfd's fdinfo (`-1` once the process has been reaped).
pub(crate) fn parse_fdinfo_pid(fdinfo: &str) -> Result<i32, ProcfsParseError> {
    const FIELD: &str = "Pid";
    let value = fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .ok_or(ProcfsParseError::MissingField { field: FIELD })?;
    value
        .trim()
        .parse()
        .map_err(|_| ProcfsParseError::InvalidNumber { field: FIELD })
}

fn set_once<T>(
    slot: &mut Option<T>,
    field: &'static str,
    value: T,
) -> Result<(), ProcfsParseError> {
    if slot.replace(value).is_some() {
        return Err(ProcfsParseError::DuplicateField { field });
    }
    Ok(())
}

/// Strict decimal: `str::parse` would also accept a leading `+`, which the kernel never
/// writes.
fn parse_decimal<T: std::str::FromStr>(
    value: &str,
    field: &'static str,
) -> Result<T, ProcfsParseError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProcfsParseError::InvalidNumber { field });
    }
    value
        .parse()
        .map_err(|_| ProcfsParseError::InvalidNumber { field })
}

fn parse_id_list(value: &str, field: &'static str) -> Result<Vec<u32>, ProcfsParseError> {
    value
        .split_ascii_whitespace()
        .map(|id| parse_decimal(id, field))
        .collect()
}

/// `Uid:`/`Gid:` hold real, effective, saved and filesystem ids: exactly four, so a format
/// change is noticed rather than misread.
fn parse_ids(value: &str, field: &'static str) -> Result<Ids, ProcfsParseError> {
    match *parse_id_list(value, field)?.as_slice() {
        [real, effective, saved, fs] => Ok(Ids {
            real,
            effective,
            saved,
            fs,
        }),
        _ => Err(ProcfsParseError::WrongIdCount { field }),
    }
}

/// Identity of a file's contents as far as `fstat` can tell: same device and inode, and no
/// write or metadata change since (size, mtime and ctime with nanoseconds). This is the
/// hash-cache key: if it matches, we assume the contents we hashed are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    /// `fstat` of an open file.
    pub(crate) fn of(file: &File) -> io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// The same from a `stat` result (of the file itself, not a link to it).
    pub(crate) fn of_stat(stat: &rustix::fs::Stat) -> io::Result<Self> {
        let out_of_range = |_| io::Error::from(io::ErrorKind::InvalidData);
        Ok(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: u64::try_from(stat.st_size).map_err(out_of_range)?,
            mtime: (
                stat.st_mtime,
                i64::try_from(stat.st_mtime_nsec).map_err(out_of_range)?,
            ),
            ctime: (
                stat.st_ctime,
                i64::try_from(stat.st_ctime_nsec).map_err(out_of_range)?,
            ),
        })
    }

    /// Whether a hash taken now may be cached under this id (the "racy git" rule).
    ///
    /// Timestamps have coarse granularity (one jiffy, or a whole second on some
    /// filesystems). A file rewritten to the same size within that granularity keeps its
    /// key, so a cached hash could outlive the contents it describes. We therefore cache
    /// only files whose ctime is comfortably in the past. Unlike mtime, ctime cannot be set
    /// by the file's owner: any change to the file stamps it with the current time. A file
    /// changed since its ctime would therefore carry a ctime near "now" and fail this test.
    /// A ctime in the future (clock skew) is never settled.
    pub(crate) fn settled(&self, now: SystemTime) -> bool {
        let (secs, nanos) = self.ctime;
        let (Ok(secs), Ok(nanos)) = (u64::try_from(secs), u32::try_from(nanos)) else {
            return false;
        };
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::new(secs, 0))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
            .and_then(|ctime| ctime.checked_add(RACY_WINDOW))
            .is_some_and(|settled_at| settled_at < now)
    }
}

/// The agent's own `/proc/self/cgroup` (bounded like every procfs read).
pub(crate) fn own_cgroup() -> io::Result<String> {
    let mut bytes = Vec::new();
    File::open("/proc/self/cgroup")?
        .take(MAX_PROC_FILE)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// SHA-256 of a file's contents from its current offset, read in chunks so a large binary
/// is never held in memory at once.
pub(crate) fn sha256(mut file: &File) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};
    use std::process::{Child, Command};

    use super::*;

    const STAT_TAIL: &str =
        "S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 987654 1000 200 18446744073709551615";

    #[test]
    fn stat_start_time_table() {
        let ok: &[(&str, u64)] = &[
            (&format!("42 (sleep) {STAT_TAIL}"), 987654),
            (&format!("42 (my prog) {STAT_TAIL}"), 987654),
            // comm chosen to look like the end of comm plus fake fields.
            (&format!("42 (a) 1 2 3 ) {STAT_TAIL}"), 987654),
            (&format!("42 ()) {STAT_TAIL}"), 987654),
            (&format!("42 (x\ny) {STAT_TAIL}\n"), 987654),
            (&format!("42 (() {STAT_TAIL}"), 987654),
        ];
        for (line, want) in ok {
            assert_eq!(parse_stat_start_time(line), Ok(*want), "{line:?}");
        }

        let err: &[(&str, ProcfsParseError)] = &[
            ("", ProcfsParseError::NoComm),
            ("42 sleep S 1 2 3", ProcfsParseError::NoComm),
            ("42 sleep) S 1 2 3", ProcfsParseError::NoComm),
            (
                "42 (sleep) S 1 2 3",
                ProcfsParseError::MissingField { field: "starttime" },
            ),
            (
                "42 (sleep) S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 -5 1",
                ProcfsParseError::InvalidNumber { field: "starttime" },
            ),
            (
                "42 (sleep) S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 +5 1",
                ProcfsParseError::InvalidNumber { field: "starttime" },
            ),
            (
                "42 (sleep) S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 99999999999999999999999 1",
                ProcfsParseError::InvalidNumber { field: "starttime" },
            ),
        ];
        for (line, want) in err {
            assert_eq!(parse_stat_start_time(line), Err(*want), "{line:?}");
        }
    }

    #[test]
    fn stat_ppid_table() {
        assert_eq!(parse_stat_ppid(&format!("42 (sleep) {STAT_TAIL}")), Ok(1));
        assert_eq!(parse_stat_ppid(&format!("42 (a) 9 9 ) {STAT_TAIL}")), Ok(1));
        assert_eq!(parse_stat_ppid("1 (init) S 0 1 1"), Ok(0));
        assert_eq!(
            parse_stat_ppid("42 (sleep) S"),
            Err(ProcfsParseError::MissingField { field: "ppid" })
        );
        assert_eq!(
            parse_stat_ppid("42 (sleep) S -1 2"),
            Err(ProcfsParseError::InvalidNumber { field: "ppid" })
        );
        assert_eq!(
            parse_stat_ppid("42 sleep S 1"),
            Err(ProcfsParseError::NoComm)
        );
    }

    const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
        Uid:\t1000\t1001\t1002\t1003\nGid:\t100\t101\t102\t103\nFDSize:\t64\n\
        Groups:\t4 24 27 \nNgid:\t0\n";

    #[test]
    fn status_gives_the_parent_pid_once() {
        let with_ppid = STATUS.replace("Tgid:\t42\n", "Tgid:\t42\nPid:\t42\nPPid:\t7\n");
        assert_eq!(parse_status_ppid(&with_ppid), Ok(7));
        assert_eq!(
            parse_status_ppid(STATUS),
            Err(ProcfsParseError::MissingField { field: "PPid" })
        );
        assert_eq!(
            parse_status_ppid(&with_ppid.replace("PPid:\t7\n", "PPid:\t7\nPPid:\t8\n")),
            Err(ProcfsParseError::DuplicateField { field: "PPid" })
        );
        assert_eq!(
            parse_status_ppid(&with_ppid.replace("PPid:\t7", "PPid:\t+7")),
            Err(ProcfsParseError::InvalidNumber { field: "PPid" })
        );
        // The kernel's own file, for this process: the same parent as `stat` gives.
        let me = i32::try_from(std::process::id()).unwrap();
        let pinned = PinnedProc::new(ProcDir::open(me).unwrap());
        let (_, from_status) = pinned.status_and_ppid().unwrap();
        let (_, from_stat) = pinned.dir().start_time_and_ppid().unwrap();
        assert_eq!(from_status, from_stat);
        assert_eq!(from_status, std::os::unix::process::parent_id());
    }

    #[test]
    fn status_parses_real_ids_and_groups() {
        assert_eq!(
            parse_status(STATUS),
            Ok(Status {
                uid: Ids {
                    real: 1000,
                    effective: 1001,
                    saved: 1002,
                    fs: 1003,
                },
                gid: Ids {
                    real: 100,
                    effective: 101,
                    saved: 102,
                    fs: 103,
                },
                groups: vec![4, 24, 27],
            })
        );
        let no_groups = STATUS.replace("Groups:\t4 24 27 ", "Groups:\t");
        assert_eq!(parse_status(&no_groups).map(|s| s.groups), Ok(vec![]));
        // Name: is escaped by the kernel, but a literal fake line in it is harmless anyway.
        let odd_name = STATUS.replace("Name:\tsleep", "Name:\tUid: 0 0 0 0");
        assert_eq!(parse_status(&odd_name).map(|s| s.uid.real), Ok(1000));
    }

    /// The `Groups:` line is read whole whatever its length: 64 groups, with or without
    /// the trailing space older kernels print, and NGROUPS_MAX groups of the widest gid,
    /// which must still fit under [`MAX_PROC_FILE`].
    #[test]
    fn status_with_many_groups() {
        let sixty_four: Vec<u32> = (1000..1064).collect();
        let list = |groups: &[u32]| {
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        for line in [
            list(&sixty_four),
            format!("{} ", list(&sixty_four)),
            format!("{}\t", list(&sixty_four)),
        ] {
            let text = STATUS.replace("4 24 27 ", &line);
            assert_eq!(
                parse_status(&text).map(|s| s.groups).as_ref(),
                Ok(&sixty_four),
                "{line:?}"
            );
        }

        let most: Vec<u32> = (0..65536u32).map(|i| u32::MAX - i).collect();
        let text = STATUS.replace("4 24 27", &list(&most));
        assert!(
            u64::try_from(text.len()).unwrap() <= MAX_PROC_FILE,
            "{} bytes",
            text.len()
        );
        assert_eq!(parse_status(&text).map(|s| s.groups), Ok(most));
    }

    #[test]
    fn status_malformed_table() {
        let cases: &[(String, ProcfsParseError)] = &[
            (
                STATUS.replace("Uid:\t1000\t1001\t1002\t1003\n", ""),
                ProcfsParseError::MissingField { field: "Uid" },
            ),
            (
                STATUS.replace("Gid:", "Gxd:"),
                ProcfsParseError::MissingField { field: "Gid" },
            ),
            (
                STATUS.replace("Groups:\t4 24 27 \n", ""),
                ProcfsParseError::MissingField { field: "Groups" },
            ),
            (
                STATUS.replace("1000\t1001", "x\t1001"),
                ProcfsParseError::InvalidNumber { field: "Uid" },
            ),
            (
                STATUS.replace("\t1003", ""),
                ProcfsParseError::WrongIdCount { field: "Uid" },
            ),
            (
                STATUS.replace("\t103", "\t103\t104"),
                ProcfsParseError::WrongIdCount { field: "Gid" },
            ),
            (
                STATUS.replace("4 24 27", "4 -24"),
                ProcfsParseError::InvalidNumber { field: "Groups" },
            ),
            (
                STATUS.replace("4 24 27", "4294967296"),
                ProcfsParseError::InvalidNumber { field: "Groups" },
            ),
            (
                format!("{STATUS}Uid:\t0\t0\t0\t0\n"),
                ProcfsParseError::DuplicateField { field: "Uid" },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_status(text), Err(*want), "{text:?}");
        }
    }

    #[test]
    fn fdinfo_pid_table() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nPid:\t1234\nNSpid:\t1234\n";
        assert_eq!(parse_fdinfo_pid(fdinfo), Ok(1234));
        assert_eq!(parse_fdinfo_pid(&fdinfo.replace("1234", "-1")), Ok(-1));
        assert_eq!(
            parse_fdinfo_pid("pos:\t0\nNSpid:\t5\n"),
            Err(ProcfsParseError::MissingField { field: "Pid" })
        );
        assert_eq!(
            parse_fdinfo_pid("Pid:\tabc\n"),
            Err(ProcfsParseError::InvalidNumber { field: "Pid" })
        );
    }

    #[test]
    fn sha256_reads_in_chunks() {
        let mut tmp = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..(3 * HASH_CHUNK + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        tmp.write_all(&data).unwrap();
        let mut file = tmp.try_clone().unwrap();
        file.rewind().unwrap();
        let want: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(sha256(&file).unwrap(), want);
    }

    #[test]
    fn settled_needs_old_ctime() {
        let id = |ctime: i64| FileId {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (0, 0),
            ctime: (ctime, 0),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(id(1_000_000 - 10).settled(now));
        assert!(!id(1_000_000 - 1).settled(now));
        assert!(!id(1_000_000 + 50).settled(now));
        assert!(!id(-1).settled(now));
    }

    fn pid_of(child: &Child) -> i32 {
        i32::try_from(child.id()).unwrap()
    }

    #[test]
    fn own_process_reads() {
        let dir = ProcDir::open(i32::try_from(std::process::id()).unwrap()).unwrap();
        let first = dir.start_time().unwrap();
        assert_eq!(dir.start_time().unwrap(), first);
        assert_eq!(
            dir.status().unwrap().uid.real,
            rustix::process::getuid().as_raw()
        );
        assert_eq!(
            dir.exe_link().unwrap(),
            ExeLink::Path(std::env::current_exe().unwrap())
        );
        let (_, id) = dir.open_exe().unwrap();
        assert_eq!(dir.exe_id().unwrap(), id);
        let by_path = File::open(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(dir.exe_id().unwrap(), FileId::of(&by_path).unwrap());
        let other = tempfile::tempfile().unwrap();
        assert_ne!(dir.exe_id().unwrap(), FileId::of(&other).unwrap());
    }

    /// The pins hold: after the process is reaped, reads through the held `/proc/<pid>` fd
    /// and the pidfd report it gone, whatever now owns the number.
    #[test]
    fn pins_report_reaped_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = pid_of(&child);
        let dir = ProcDir::open(pid).unwrap();
        let pidfd = PidFd::open(pid).unwrap();
        dir.start_time().unwrap();
        if let Some(pidfd) = &pidfd {
            pidfd.check_alive().unwrap();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(
            dir.start_time(),
            Err(AttestationError::ProcessExited { pid: p }) if p == pid
        ));
        assert!(matches!(
            dir.status(),
            Err(AttestationError::ProcessExited { .. })
        ));
        assert!(matches!(
            dir.exe_id(),
            Err(AttestationError::ProcessExited { .. })
        ));
        if let Some(pidfd) = &pidfd {
            assert!(matches!(
                pidfd.check_alive(),
                Err(AttestationError::ProcessExited { .. })
            ));
        }
    }

    /// The files a pinned caller keeps open are read afresh every time (a stopped and
    /// continued process reads as such through the same open `status`), and, like the
    /// directory they were opened through, report the process gone once it is reaped.
    #[test]
    fn kept_files_read_the_process_as_it_is_now_and_fail_once_it_is_reaped() {
        use rustix::process::{Signal, kill_process};
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = pid_of(&child);
        let pinned = PinnedProc::new(ProcDir::open(pid).unwrap());
        let state = || {
            let text = pinned.read(&pinned.status, "status").unwrap();
            let state = text.lines().find_map(|l| l.strip_prefix("State:")).unwrap();
            state.trim().chars().next().unwrap()
        };
        let wait_for = |want: char| {
            for _ in 0..500 {
                if state() == want {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("the kept status never read {want}");
        };
        let raw = Pid::from_raw(pid).unwrap();
        wait_for('S');
        kill_process(raw, Signal::STOP).unwrap();
        wait_for('T');
        kill_process(raw, Signal::CONT).unwrap();
        wait_for('S');
        let (status, ppid) = pinned.status_and_ppid().unwrap();
        assert_eq!(status.uid.real, rustix::process::getuid().as_raw());
        assert_eq!(ppid, std::process::id());
        assert!(!pinned.cgroup().unwrap().is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(
            pinned.status_and_ppid(),
            Err(AttestationError::ProcessExited { pid: p }) if p == pid
        ));
        assert!(matches!(
            pinned.cgroup(),
            Err(AttestationError::ProcessExited { .. })
        ));
    }

    #[test]
    fn non_positive_pid_is_no_pid() {
        assert!(matches!(PidFd::open(0), Err(AttestationError::NoPid)));
        assert!(matches!(PidFd::open(-7), Err(AttestationError::NoPid)));
    }
}
