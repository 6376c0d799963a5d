//! How fast agents may have JWT-SVIDs minted: token buckets per workload and per agent.
//!
//! Every mint costs a signature and a permanent audit record, and a workload decides how
//! many it asks for (one per distinct audience list). [`MintLimiter`] keeps two buckets:
//! one per workload (the agent and the SPIFFE ID it asks for) and one per agent (all its
//! workloads together). A mint takes one token from each, or from neither: a refused
//! request costs its workload nothing. Buckets refill continuously at their rate up to
//! their burst; a new bucket starts full. Time comes from a [`Clock`], so tests move it.
//!
//! Buckets are keyed only by identities the agent is entitled to (the issuer checks the
//! entry first), and full buckets are forgotten when the maps grow, so the limiter's own
//! memory follows the registered entries, not the requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use common::SpiffeId;

use crate::clock::Clock;

/// Default sustained JWT-SVID mints per second for one workload on one agent.
pub const DEFAULT_WORKLOAD_RATE: u32 = 20;
/// Default burst of JWT-SVID mints for one workload on one agent.
pub const DEFAULT_WORKLOAD_BURST: u32 = 100;
/// Default sustained JWT-SVID mints per second for all workloads of one agent.
pub const DEFAULT_AGENT_RATE: u32 = 200;
/// Default burst of JWT-SVID mints for all workloads of one agent.
pub const DEFAULT_AGENT_BURST: u32 = 1000;

/// Bucket count above which full buckets are dropped (a full bucket is what a new one is).
const PRUNE_ABOVE: usize = 1024;

/// A token bucket's shape: `per_second` tokens added each second, at most `burst` held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained rate, tokens per second (at least 1).
    pub per_second: u32,
    /// Most tokens held, the largest burst (at least 1).
    pub burst: u32,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s, burst {}", self.per_second, self.burst)
    }
}

/// The JWT-SVID mint limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintLimits {
    /// Per workload: one SPIFFE ID on one agent.
    pub per_workload: Rate,
    /// Per agent: all its workloads together.
    pub per_agent: Rate,
}

impl Default for MintLimits {
    fn default() -> Self {
        Self {
            per_workload: Rate {
                per_second: DEFAULT_WORKLOAD_RATE,
                burst: DEFAULT_WORKLOAD_BURST,
            },
            per_agent: Rate {
                per_second: DEFAULT_AGENT_RATE,
                burst: DEFAULT_AGENT_BURST,
            },
        }
    }
}

/// Which limit refused a mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// The workload's own bucket.
    Workload,
    /// The agent's bucket, shared by its workloads.
    Agent,
}

/// A mint refused by a limit: which one, its shape, and when a token is there again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "JWT-SVID mint rate limit exceeded: per-{} limit of {rate} reached for {subject}; retry in {} ms",
    match .scope { LimitScope::Workload => "workload", LimitScope::Agent => "agent" },
    .retry_after.as_millis()
)]
pub struct Throttled {
    /// The limit that refused.
    pub scope: LimitScope,
    /// Its shape.
    pub rate: Rate,
    /// The workload's or the agent's SPIFFE ID.
    pub subject: String,
    /// How long until the bucket holds a token again.
    pub retry_after: Duration,
}

/// One token, in the bucket's unit (nano-tokens: a token accrues by whole nanoseconds of
/// time, so the arithmetic is exact).
const TOKEN: u128 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Nano-tokens held.
    held: u128,
    at: SystemTime,
}

impl Bucket {
    fn full(rate: Rate, now: SystemTime) -> Self {
        Self {
            held: capacity(rate),
            at: now,
        }
    }

    /// Adds what accrued since the last look. A clock that went back adds nothing.
    fn refill(&mut self, rate: Rate, now: SystemTime) {
        if let Ok(elapsed) = now.duration_since(self.at) {
            let accrued = elapsed
                .as_nanos()
                .saturating_mul(u128::from(rate.per_second));
            self.held = self.held.saturating_add(accrued).min(capacity(rate));
            self.at = now;
        }
    }

    fn is_full(&self, rate: Rate) -> bool {
        self.held >= capacity(rate)
    }

    fn has_token(&self) -> bool {
        self.held >= TOKEN
    }

    fn take(&mut self) {
        self.held = self.held.saturating_sub(TOKEN);
    }

    /// Time until one whole token is there (zero if it is).
    fn retry_after(&self, rate: Rate) -> Duration {
        let missing = TOKEN.saturating_sub(self.held);
        let nanos = missing.div_ceil(u128::from(rate.per_second.max(1)));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

fn capacity(rate: Rate) -> u128 {
    u128::from(rate.burst) * TOKEN
}

#[derive(Debug, Default)]
struct Buckets {
    workloads: HashMap<(SpiffeId, SpiffeId), Bucket>,
    agents: HashMap<SpiffeId, Bucket>,
}

/// Token buckets for JWT-SVID mints (see the module docs).
#[derive(Debug)]
pub struct MintLimiter {
    limits: MintLimits,
    clock: Arc<dyn Clock>,
    buckets: Mutex<Buckets>,
}

impl MintLimiter {
    /// A limiter with `limits`, reading time from `clock`.
    pub fn new(limits: MintLimits, clock: Arc<dyn Clock>) -> Self {
        Self {
            limits,
            clock,
            buckets: Mutex::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> MintLimits {
        self.limits
    }

    /// Takes one mint for `workload` on `agent` from both buckets, or refuses (taking
    /// nothing) naming the limit that is exhausted, the workload's first.
    pub fn acquire(&self, agent: &SpiffeId, workload: &SpiffeId) -> Result<(), Throttled> {
        let now = self.clock.now();
        let MintLimits {
            per_workload,
            per_agent,
        } = self.limits;
        let mut guard = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = &mut *guard;
        prune(&mut b.workloads, per_workload, now);
        prune(&mut b.agents, per_agent, now);
        let w = b
            .workloads
            .entry((agent.clone(), workload.clone()))
            .or_insert_with(|| Bucket::full(per_workload, now));
        w.refill(per_workload, now);
        let a = b
            .agents
            .entry(agent.clone())
            .or_insert_with(|| Bucket::full(per_agent, now));
        a.refill(per_agent, now);
        if !w.has_token() {
            return Err(Throttled {
                scope: LimitScope::Workload,
                rate: per_workload,
                subject: workload.to_string(),
                retry_after: w.retry_after(per_workload),
            });
        }
        if !a.has_token() {
            return Err(Throttled {
                scope: LimitScope::Agent,
                rate: per_agent,
                subject: agent.to_string(),
                retry_after: a.retry_after(per_agent),
            });
        }
        w.take();
        a.take();
        Ok(())
    }
}

/// Drops the buckets that are full again once there are more than [`PRUNE_ABOVE`].
fn prune<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Bucket>, rate: Rate, now: SystemTime) {
    if map.len() > PRUNE_ABOVE {
        map.retain(|_, b| {
            b.refill(rate, now);
            !b.is_full(rate)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    fn limiter(per_workload: Rate, per_agent: Rate) -> (MintLimiter, ManualClock) {
        let clock = ManualClock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let l = MintLimiter::new(
            MintLimits {
                per_workload,
                per_agent,
            },
            Arc::new(clock.clone()),
        );
        (l, clock)
    }

    const ROOMY: Rate = Rate {
        per_second: 1_000_000,
        burst: 1_000_000,
    };

    #[test]
    fn a_burst_is_allowed_then_the_rate_and_refusals_name_the_limit() {
        let (l, clock) = limiter(
            Rate {
                per_second: 10,
                burst: 5,
            },
            ROOMY,
        );
        let (agent, w) = (id("spiffe://td/node/a"), id("spiffe://td/w"));
        for i in 0..5 {
            assert!(l.acquire(&agent, &w).is_ok(), "mint {i} of the burst");
        }
        let refused = l.acquire(&agent, &w).unwrap_err();
        assert_eq!(refused.scope, LimitScope::Workload);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        let msg = refused.to_string();
        assert!(msg.contains("per-workload limit of 10/s, burst 5"), "{msg}");
        assert!(msg.contains("spiffe://td/w"), "{msg}");
        assert!(msg.contains("retry in 100 ms"), "{msg}");
        // Time standing still refills nothing; refusals are free.
        for _ in 0..100 {
            assert!(l.acquire(&agent, &w).is_err());
        }
        // 10/s: one token per 100 ms.
        clock.advance(Duration::from_millis(99));
        assert!(l.acquire(&agent, &w).is_err());
        clock.advance(Duration::from_millis(1));
        assert!(l.acquire(&agent, &w).is_ok());
        assert!(l.acquire(&agent, &w).is_err());
        // A long pause refills the burst, never more.
        clock.advance(Duration::from_secs(3_600));
        for _ in 0..5 {
            assert!(l.acquire(&agent, &w).is_ok());
        }
        assert!(l.acquire(&agent, &w).is_err());
    }

    #[test]
    fn workloads_have_their_own_buckets_and_share_their_agents() {
        let (l, clock) = limiter(
            Rate {
                per_second: 1,
                burst: 2,
            },
            Rate {
                per_second: 1,
                burst: 3,
            },
        );
        let (a, b) = (id("spiffe://td/node/a"), id("spiffe://td/node/b"));
        let (w1, w2) = (id("spiffe://td/w1"), id("spiffe://td/w2"));
        assert!(l.acquire(&a, &w1).is_ok());
        assert!(l.acquire(&a, &w1).is_ok());
        assert_eq!(l.acquire(&a, &w1).unwrap_err().scope, LimitScope::Workload);
        // Another workload of the same agent has its own bucket, but the agent's holds
        // one more token only.
        assert!(l.acquire(&a, &w2).is_ok());
        let refused = l.acquire(&a, &w2).unwrap_err();
        assert_eq!(refused.scope, LimitScope::Agent);
        assert!(
            refused
                .to_string()
                .contains("per-agent limit of 1/s, burst 3")
        );
        assert!(refused.to_string().contains("spiffe://td/node/a"));
        // The same SPIFFE ID on another agent is another workload.
        assert!(l.acquire(&b, &w1).is_ok());
        assert!(l.acquire(&b, &w1).is_ok());
        // A refusal by the agent's bucket took nothing from the workload's: after one
        // second w2 gets the agent's new token.
        clock.advance(Duration::from_secs(1));
        assert!(l.acquire(&a, &w2).is_ok());
    }

    #[test]
    fn a_clock_that_goes_back_adds_nothing() {
        let (l, clock) = limiter(
            Rate {
                per_second: 1,
                burst: 1,
            },
            ROOMY,
        );
        let (agent, w) = (id("spiffe://td/node/a"), id("spiffe://td/w"));
        clock.advance(Duration::from_secs(10));
        assert!(l.acquire(&agent, &w).is_ok());
        let earlier = MintLimiter {
            clock: Arc::new(ManualClock::starting_at(SystemTime::UNIX_EPOCH)),
            ..l
        };
        assert!(earlier.acquire(&agent, &w).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_when_there_are_many() {
        let (l, clock) = limiter(
            Rate {
                per_second: 1,
                burst: 1,
            },
            ROOMY,
        );
        let agent = id("spiffe://td/node/a");
        for i in 0..=PRUNE_ABOVE {
            assert!(l.acquire(&agent, &id(&format!("spiffe://td/w{i}"))).is_ok());
        }
        clock.advance(Duration::from_secs(2));
        assert!(l.acquire(&agent, &id("spiffe://td/new")).is_ok());
        let b = l.buckets.lock().unwrap();
        assert_eq!(
            b.workloads.len(),
            1,
            "only the bucket just drawn from is kept"
        );
    }
}
