//! The open-file limit a daemon runs under.
//!
//! A process starts with the soft `RLIMIT_NOFILE` its parent had, and the usual soft
//! default is 1,024: a limit kept for programs that still use `select()`, whose descriptor
//! sets stop at 1,024. The hard limit is what the administrator allows (systemd gives
//! services 1,024 soft and 524,288 hard, and documents that a program able to use more
//! descriptors should raise its soft limit itself; Go programs do so at start). Both
//! daemons wait on descriptors with epoll only, so they raise the soft limit to the hard
//! one before anything is sized by it: the agent's Workload API connection cap, the
//! server's connections from agents. Whoever wants a lower limit sets the hard limit
//! (`LimitNOFILE=` in the unit, `prlimit`, the container runtime).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What [`raise_open_file_limit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenFileLimit {
    /// The soft limit was below the hard one and now equals it.
    Raised {
        /// The soft limit before.
        from: u64,
        /// The soft limit now (the hard limit).
        to: u64,
    },
    /// Nothing to raise: the soft limit (`None`: unlimited) already is the hard one, or
    /// the hard limit is unlimited (see [`raise_open_file_limit`]).
    Unchanged(Option<u64>),
    /// The kernel refused to raise the soft limit from `soft` to `hard`: it stays.
    Refused {
        /// The soft limit, unchanged.
        soft: u64,
        /// The hard limit it could not be raised to.
        hard: u64,
        /// Why.
        error: String,
    },
}

impl OpenFileLimit {
    /// Logs what was done (once logging is set up): raised at info, refused at warn.
    pub fn log(&self) {
        match self {
            Self::Raised { from, to } => {
                tracing::info!(from, to, "open-file limit raised to the hard limit");
            }
            Self::Unchanged(soft) => {
                tracing::debug!(soft = ?soft, "open-file limit left as it is");
            }
            Self::Refused { soft, hard, error } => tracing::warn!(
                soft,
                hard,
                error = %error,
                "open-file limit could not be raised to the hard limit"
            ),
        }
    }
}

/// Raises this process's soft open-file limit (`RLIMIT_NOFILE`) to its hard limit.
///
/// Call it first thing in a daemon, before anything reads the limit. A hard limit of
/// "unlimited" leaves the soft limit as it is: the kernel never allows more descriptors
/// than `fs.nr_open`, and refuses such a soft limit.
pub fn raise_open_file_limit() -> OpenFileLimit {
    let now = getrlimit(Resource::Nofile);
    match (now.current, now.maximum) {
        (Some(soft), Some(hard)) if soft < hard => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => OpenFileLimit::Raised {
                    from: soft,
                    to: hard,
                },
                Err(e) => OpenFileLimit::Refused {
                    soft,
                    hard,
                    error: e.to_string(),
                },
            }
        }
        (soft, _) => OpenFileLimit::Unchanged(soft),
    }
}
