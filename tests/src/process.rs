//! One child process of a test: its pid, its exit status and its log, killed when dropped.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::wait_for;

/// How long a process may take to exit after SIGTERM before the test fails. Both binaries
/// drain within 10 s (their `app.rs`); the rest is room for a loaded machine.
pub const TERM_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of a log printed with a failure.
const TAIL_LINES: usize = 60;

/// The last lines of the file at `path` (empty if it cannot be read).
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The exit code of `status` as a shell reports it: the code, or 128 + the signal number
/// for a process killed by a signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// A child process whose stdout is discarded and whose stderr is appended to a log file.
///
/// Dropping it kills the process (SIGKILL) if it is still running; if the thread is
/// panicking, the end of the log is printed first.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd`, appending its stderr to `log`. `name` labels failure messages.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            status: None,
            log: log.to_owned(),
        }
    }

    /// The process id (the process may have exited since).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit code once it has exited (see [`exit_code`]); `None` while it runs. Never
    /// blocks.
    pub fn exited(&mut self) -> Option<i32> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name));
        }
        self.status.map(exit_code)
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit code, or `None`
    /// if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_for(timeout, || self.exited())
    }

    /// SIGTERM, then waits for the exit; returns the exit code and the time from the signal
    /// to the exit (zero if the process had already exited). Fails the test, with the end
    /// of the log, if the process is still running [`TERM_TIMEOUT`] after the signal.
    pub fn terminate(&mut self) -> (i32, Duration) {
        if let Some(code) = self.exited() {
            return (code, Duration::ZERO);
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid fits i32"));
        let sent = Instant::now();
        // The process has not been reaped (exited() said so), so the pid is still its own.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("SIGTERM to {}: {e}", self.name));
        let code = self.wait_exit(TERM_TIMEOUT);
        let took = sent.elapsed();
        let Some(code) = code else {
            self.kill();
            panic!(
                "{} ignored SIGTERM for {TERM_TIMEOUT:?}:\n{}",
                self.name,
                self.log_tail()
            );
        };
        (code, took)
    }

    /// SIGKILL (as a crash), then reaps the process; returns its exit code.
    pub fn kill(&mut self) -> i32 {
        if let Some(code) = self.exited() {
            return code;
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name));
        self.status = Some(status);
        exit_code(status)
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The end of the log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log_tail());
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The current run of a daemon that tests stop and restart: empty before the first start
/// and after each stop. `ServerProc` and `AgentProc` dereference to it, so both offer the
/// same pid, exit status and stop methods.
#[derive(Debug)]
pub struct CurrentRun {
    name: &'static str,
    process: Option<Process>,
}

impl CurrentRun {
    /// No run yet of the daemon `name`.
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            process: None,
        }
    }

    /// Makes `p` the current run.
    pub(crate) fn set(&mut self, p: Process) {
        self.process = Some(p);
    }

    /// Whether a run was started and not yet stopped or waited for.
    pub fn is_started(&self) -> bool {
        self.process.is_some()
    }

    /// Whether the process was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// The current process; fails the test if none was started.
    pub fn process(&mut self) -> &mut Process {
        let name = self.name;
        self.process
            .as_mut()
            .unwrap_or_else(|| panic!("{name} not started"))
    }

    /// The process id of the current run.
    pub fn pid(&mut self) -> u32 {
        self.process().pid()
    }

    /// Exit code once the current run has exited; `None` while it runs. Never blocks.
    pub fn exited(&mut self) -> Option<i32> {
        self.process().exited()
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let code = self.process.as_mut()?.wait_exit(timeout)?;
        self.process = None;
        Some(code)
    }

    /// SIGTERM and wait: the exit code and how long the exit took after the signal.
    /// Fails the test, with the log, if the process ignores SIGTERM.
    pub fn terminate(&mut self) -> (i32, Duration) {
        let r = self.process().terminate();
        self.process = None;
        r
    }

    /// Graceful stop (SIGTERM); does nothing if the process is not running.
    pub fn stop(&mut self) {
        if self.process.is_some() {
            self.terminate();
        }
    }

    /// Hard stop (SIGKILL), as a crash.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}
