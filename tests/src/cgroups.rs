//! Callers of the Workload API placed where a test wants them: in kernel cgroups the test
//! creates (laid out as container runtimes and systemd lay them out), as `nobody` with the
//! supplementary groups it names, or both.
//!
//! A caller is a root shell that moves itself into each cgroup (writing its pid to
//! `cgroup.procs`), then drops privileges with `setpriv` and execs the client; so the
//! process the agent attests is the client itself, in the cgroups and with the ids asked
//! for. `std::process::Command::uid` cannot be used for this: as root it drops every
//! supplementary group.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::nobody::{NOBODY, bin_for_nobody};

/// Where a cgroup hierarchy is mounted, by its `/proc/self/mountinfo` line: `None` asks for
/// the unified (v2) one, `Some("name=systemd")` for the v1 hierarchy with that option.
pub fn mount_point(v1_option: Option<&str>) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1)?;
        let point = left.split(' ').nth(4)?;
        let wanted = match v1_option {
            None => fstype == "cgroup2",
            Some(option) => fstype == "cgroup" && options.split(',').any(|o| o == option),
        };
        wanted.then(|| PathBuf::from(point))
    })
}

/// Cgroups created by a test; removed, deepest first, when dropped (also when an assertion
/// failed). The processes in them must have exited or moved by then.
#[derive(Debug, Default)]
pub struct TestCgroups {
    made: Vec<PathBuf>,
}

impl TestCgroups {
    /// No cgroups yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `root/relative` and its missing parents; returns the leaf.
    pub fn make(&mut self, root: &Path, relative: &str) -> PathBuf {
        let mut dir = root.to_path_buf();
        for component in relative.split('/').filter(|c| !c.is_empty()) {
            dir.push(component);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.made.push(dir.clone());
            }
        }
        dir
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // A process that just exited may still be counted for a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if dir.exists() {
                eprintln!("could not remove cgroup {}", dir.display());
            }
        }
    }
}

/// Moves the process `pid` into `cgroup` (a directory of a cgroup hierarchy).
pub fn move_into(cgroup: &Path, pid: u32) {
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", cgroup.display()));
}

/// Who a caller runs as and where: built with [`Caller::nobody`] or [`Caller::root`], then
/// [`Caller::groups`] and [`Caller::cgroups`]; [`Caller::command`] gives the command.
#[derive(Debug, Clone, Default)]
pub struct Caller<'a> {
    /// `None`: stays root. `Some(uid)`: uid and gid become that number.
    ids: Option<u32>,
    groups: &'a [u32],
    cgroups: Vec<&'a Path>,
}

impl<'a> Caller<'a> {
    /// Runs as uid and gid `nobody`, with no supplementary groups unless [`Self::groups`].
    pub fn nobody() -> Self {
        Self {
            ids: Some(NOBODY),
            ..Self::default()
        }
    }

    /// Runs as root (the test's own ids).
    pub fn root() -> Self {
        Self::default()
    }

    /// Exactly these supplementary groups (only for a caller that drops to another user).
    pub fn groups(mut self, groups: &'a [u32]) -> Self {
        self.groups = groups;
        self
    }

    /// Moves into each of these cgroups, in order, before the client starts.
    pub fn cgroups(mut self, cgroups: &[&'a Path]) -> Self {
        self.cgroups = cgroups.to_vec();
        self
    }

    /// `program args…`, run as this caller (cwd `/`, `SPIFFE_ENDPOINT_SOCKET` removed).
    pub fn command(&self, program: &Path) -> Command {
        let mut script = String::from("set -e\n");
        for cgroup in &self.cgroups {
            script.push_str(&format!(
                "echo $$ > '{}'\n",
                cgroup.join("cgroup.procs").display()
            ));
        }
        script.push_str("exec \"$@\"\n");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script, "sh"]);
        if let Some(id) = self.ids {
            cmd.arg("setpriv")
                .arg(format!("--reuid={id}"))
                .arg(format!("--regid={id}"));
            if self.groups.is_empty() {
                cmd.arg("--clear-groups");
            } else {
                let list: Vec<String> = self.groups.iter().map(u32::to_string).collect();
                cmd.arg("--groups").arg(list.join(","));
            }
            cmd.arg("--");
        }
        cmd.arg(program)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .current_dir("/");
        cmd
    }

    /// Runs `tessera-agent api fetch x509 --output json` on `socket` as this caller, with
    /// `extra` arguments (e.g. `--write DIR`).
    pub fn fetch_x509(&self, socket: &Path, extra: &[&std::ffi::OsStr]) -> Output {
        self.command(&bin_for_nobody("tessera-agent"))
            .args([
                "api",
                "fetch",
                "x509",
                "--output",
                "json",
                "--timeout",
                "10",
            ])
            .arg("--socket-path")
            .arg(socket)
            .args(extra)
            .output()
            .expect("run sh, setpriv (util-linux) and tessera-agent")
    }
}

/// The sorted SPIFFE IDs a `fetch x509 --output json` returned, or its stderr when it
/// failed.
pub fn svid_ids(out: &Output) -> Result<Vec<String>, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let mut ids: Vec<String> = v["svids"]
        .as_array()
        .ok_or("no svids array")?
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    Ok(ids)
}
