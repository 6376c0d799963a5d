//! One owner for a daemon's tasks, with a bounded drain at shutdown.
//!
//! A [`Supervisor`] spawns every long-running component under a name into one
//! [`JoinSet`] and hands them one shutdown token. Three kinds of task:
//!
//! - a **service** ([`Supervisor::spawn_service`]) runs until shutdown; ending earlier,
//!   with or without an error, or panicking, is a failure that shuts the process down;
//! - a **job** ([`Supervisor::spawn_job`]) may finish on its own (e.g. waiting for
//!   readiness); an error or a panic shuts the process down;
//! - a **child** ([`Spawner::spawn`]) is per-request work a running component starts
//!   (one client stream, one background report); its failure is logged and nothing else,
//!   but it is still owned: it is awaited and, past the drain bound, aborted at shutdown.
//!
//! [`Supervisor::run`] waits for the shutdown token or the first failure, cancels the
//! token, waits up to the drain bound for every task to finish, then aborts what is left
//! and logs the names of the tasks that did not finish. No task outlives `run`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// The error a task may end with.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

/// What a supervised future may return: `()`, or `Result<(), E>` for any error `E`.
pub trait TaskOutput: Send + 'static {
    /// The outcome as the supervisor sees it.
    fn into_result(self) -> Result<(), TaskError>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), TaskError> {
        Ok(())
    }
}

impl<E: Into<TaskError> + Send + 'static> TaskOutput for Result<(), E> {
    fn into_result(self) -> Result<(), TaskError> {
        self.map_err(Into::into)
    }
}

fn boxed<F>(future: F) -> TaskFuture
where
    F: Future + Send + 'static,
    F::Output: TaskOutput,
{
    Box::pin(async move { future.await.into_result() })
}

/// How a task's end is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Service,
    Job,
    Child,
}

/// Why a supervised daemon stopped other than by a shutdown request.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A service or job returned an error.
    #[error("{task}: {error:#}")]
    Failed {
        /// The task's name.
        task: &'static str,
        /// What it returned.
        error: TaskError,
    },
    /// A service returned before shutdown was requested.
    #[error("{task} stopped unexpectedly")]
    Stopped {
        /// The task's name.
        task: &'static str,
    },
    /// A service or job panicked.
    #[error("{task} panicked: {message}")]
    Panicked {
        /// The task's name.
        task: &'static str,
        /// The panic payload, when it is a string.
        message: String,
    },
}

/// Starts children under a [`Supervisor`] from anywhere (cheap to clone).
#[derive(Debug, Clone)]
pub struct Spawner {
    tx: mpsc::UnboundedSender<(&'static str, TaskFuture)>,
    shutdown: CancellationToken,
}

impl Spawner {
    /// Runs `future` as a child task named `name`. Once the supervisor has begun its
    /// drain, the future is dropped without being run: nothing new starts during shutdown.
    pub fn spawn<F>(&self, name: &'static str, future: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        if self.shutdown.is_cancelled() || self.tx.send((name, boxed(future))).is_err() {
            tracing::debug!(task = name, "not started: shutting down");
        }
    }

    /// The shutdown token every task watches.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// Owns a daemon's tasks; see the module documentation.
#[derive(Debug)]
pub struct Supervisor {
    set: JoinSet<Result<(), TaskError>>,
    names: HashMap<Id, (&'static str, Role)>,
    shutdown: CancellationToken,
    drain: Duration,
    children_tx: mpsc::UnboundedSender<(&'static str, TaskFuture)>,
    children_rx: mpsc::UnboundedReceiver<(&'static str, TaskFuture)>,
}

impl Supervisor {
    /// A supervisor whose tasks watch `shutdown` and get `drain` to finish once it fires.
    pub fn new(shutdown: CancellationToken, drain: Duration) -> Self {
        let (children_tx, children_rx) = mpsc::unbounded_channel();
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
            drain,
            children_tx,
            children_rx,
        }
    }

    /// The shutdown token every task watches.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// A handle that starts child tasks (see [`Spawner::spawn`]).
    pub fn spawner(&self) -> Spawner {
        Spawner {
            tx: self.children_tx.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Runs `future`, which must run until shutdown, as the service `name`.
    pub fn spawn_service<F>(&mut self, name: &'static str, future: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.start(name, Role::Service, boxed(future));
    }

    /// Runs `future`, which may finish on its own but must not fail, as the job `name`.
    pub fn spawn_job<F>(&mut self, name: &'static str, future: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.start(name, Role::Job, boxed(future));
    }

    fn start(&mut self, name: &'static str, role: Role, future: TaskFuture) {
        let handle = self.set.spawn(future);
        self.names.insert(handle.id(), (name, role));
    }

    /// Judges a finished task; a failure of a service or job is returned.
    fn reap(
        &mut self,
        done: Result<(Id, Result<(), TaskError>), JoinError>,
    ) -> Option<SupervisorError> {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let Some((task, role)) = self.names.remove(&id) else {
            tracing::error!("BUG: a supervised task finished without a name");
            return None;
        };
        let shutting_down = self.shutdown.is_cancelled();
        match (done, role) {
            (Ok((_, Ok(()))), Role::Service) if !shutting_down => {
                tracing::error!(task, "a service stopped unexpectedly");
                Some(SupervisorError::Stopped { task })
            }
            (Ok((_, Ok(()))), _) => {
                tracing::debug!(task, "task finished");
                None
            }
            (Ok((_, Err(error))), Role::Child) => {
                tracing::warn!(task, error = %error, "task failed");
                None
            }
            (Ok((_, Err(error))), _) => {
                tracing::error!(task, error = %error, "task failed");
                Some(SupervisorError::Failed { task, error })
            }
            (Err(e), role) if e.is_panic() => {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(task, message = %message, "task panicked");
                (role != Role::Child).then_some(SupervisorError::Panicked { task, message })
            }
            (Err(_), _) => {
                tracing::debug!(task, "task aborted");
                None
            }
        }
    }

    /// Runs until the shutdown token fires or a service or job fails, then drains: every
    /// task gets the drain bound to finish, and what is still running after it is aborted
    /// and named in the log. Returns the first failure, if any.
    pub async fn run(mut self) -> Result<(), SupervisorError> {
        let mut first_failure = None;
        let shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                // Checked first: at shutdown, components finish at the same moment the
                // token fires, which is shutdown, not a failure.
                biased;
                () = shutdown.cancelled() => break,
                Some((name, future)) = self.children_rx.recv() => {
                    self.start(name, Role::Child, future);
                }
                Some(done) = self.set.join_next_with_id() => {
                    if let Some(failure) = self.reap(done) {
                        first_failure = Some(failure);
                        break;
                    }
                }
            }
        }
        shutdown.cancel();
        // Children requested but not started are dropped: nothing new starts now.
        self.children_rx.close();
        while self.children_rx.try_recv().is_ok() {}

        let deadline = tokio::time::Instant::now() + self.drain;
        loop {
            let done = match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(Some(done)) => done,
                Ok(None) => break,
                Err(_) => {
                    let mut still_running: BTreeMap<&str, usize> = BTreeMap::new();
                    for (name, _) in self.names.values() {
                        *still_running.entry(name).or_default() += 1;
                    }
                    tracing::warn!(
                        drain_ms = u64::try_from(self.drain.as_millis()).unwrap_or(u64::MAX),
                        still_running = ?still_running,
                        "shutdown deadline passed: tasks did not drain before the deadline; aborting them"
                    );
                    self.set.abort_all();
                    while let Some(done) = self.set.join_next_with_id().await {
                        self.reap(done);
                    }
                    break;
                }
            };
            if let Some(failure) = self.reap(done) {
                first_failure.get_or_insert(failure);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    const DRAIN: Duration = Duration::from_secs(10);

    /// A service that runs until shutdown.
    fn until_shutdown(token: &CancellationToken) -> impl Future<Output = ()> + use<> {
        let token = token.clone();
        async move { token.cancelled().await }
    }

    /// Sets its flag when dropped (finished or aborted).
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_every_task_and_succeeds() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone(), DRAIN);
        let finished = Arc::new(AtomicUsize::new(0));
        for name in ["a", "b"] {
            let (t, f) = (token.clone(), Arc::clone(&finished));
            sup.spawn_service(name, async move {
                t.cancelled().await;
                // Some draining work after the token fires.
                tokio::time::sleep(Duration::from_secs(1)).await;
                f.fetch_add(1, Ordering::SeqCst);
            });
        }
        sup.spawn_job("ready", async { Ok::<_, std::io::Error>(()) });
        let started = tokio::time::Instant::now();
        let stopper = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stopper.cancel();
        });
        sup.run().await.unwrap();
        assert_eq!(finished.load(Ordering::SeqCst), 2, "both drained");
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_service_shuts_the_rest_down_and_is_reported() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone(), DRAIN);
        sup.spawn_service("steady", until_shutdown(&token));
        sup.spawn_service("flaky", async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Err::<(), _>(std::io::Error::other("disk on fire"))
        });
        let err = sup.run().await.unwrap_err();
        assert!(token.is_cancelled(), "the failure fired the shutdown token");
        match &err {
            SupervisorError::Failed { task, error } => {
                assert_eq!(*task, "flaky");
                assert_eq!(error.to_string(), "disk on fire");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.to_string(), "flaky: disk on fire");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_returning_early_is_a_failure_but_a_job_is_not() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone(), DRAIN);
        sup.spawn_job("one-shot", async {});
        sup.spawn_service("steady", until_shutdown(&token));
        sup.spawn_service("quitter", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let err = sup.run().await.unwrap_err();
        assert!(
            matches!(err, SupervisorError::Stopped { task: "quitter" }),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_job_is_reported_with_its_message() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone(), DRAIN);
        sup.spawn_service("steady", until_shutdown(&token));
        sup.spawn_job("bad", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("invariant broken");
            #[expect(unreachable_code, reason = "gives the future an output type")]
            ()
        });
        let err = sup.run().await.unwrap_err();
        match err {
            SupervisorError::Panicked { task, message } => {
                assert_eq!(task, "bad");
                assert_eq!(message, "invariant broken");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_that_ignore_shutdown_are_aborted_at_the_drain_bound() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone(), DRAIN);
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        sup.spawn_service("stubborn", async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        });
        sup.spawn_service("polite", until_shutdown(&token));
        token.cancel();
        let started = tokio::time::Instant::now();
        sup.run().await.unwrap();
        assert_eq!(started.elapsed(), DRAIN, "waited exactly the drain bound");
        assert!(
            dropped.load(Ordering::SeqCst),
            "the stubborn task was aborted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn children_fail_alone_and_are_drained_or_aborted_at_shutdown() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone(), DRAIN);
        sup.spawn_service("steady", until_shutdown(&token));
        let spawner = sup.spawner();
        let run = tokio::spawn(sup.run());

        spawner.spawn("broken child", async {
            Err::<(), _>(std::io::Error::other("client went away"))
        });
        spawner.spawn("panicking child", async {
            panic!("child bug");
            #[expect(unreachable_code, reason = "gives the future an output type")]
            ()
        });
        let drained = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&drained);
        let t = spawner.shutdown_token().clone();
        spawner.spawn("draining child", async move {
            t.cancelled().await;
            d.store(true, Ordering::SeqCst);
        });
        let aborted = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&aborted));
        spawner.spawn("stuck child", async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!run.is_finished(), "failed children do not stop the daemon");

        token.cancel();
        let late = Arc::new(AtomicBool::new(false));
        let l = Arc::clone(&late);
        spawner.spawn("late child", async move { l.store(true, Ordering::SeqCst) });
        run.await.unwrap().unwrap();
        assert!(
            drained.load(Ordering::SeqCst),
            "children see the shutdown token"
        );
        assert!(aborted.load(Ordering::SeqCst), "stuck children are aborted");
        assert!(
            !late.load(Ordering::SeqCst),
            "nothing starts after shutdown"
        );
    }
}
