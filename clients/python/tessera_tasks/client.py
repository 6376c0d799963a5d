"""`TaskClient`: the agent's `tessera.v1.WorkloadTasks` service over the Workload API socket.

The agent attests the calling process exactly as it does for the SPIFFE Workload API: the
requester of a task is the caller's standing identity, never anything the caller asserts,
so there is nothing to authenticate here beyond reaching the socket. Every call carries the
`workload.spiffe.io: true` security header the socket requires.
"""

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import grpc

from . import errors
from ._proto import tessera_pb2, tessera_pb2_grpc

#: The environment variable SPIFFE clients read the Workload API socket from.
SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"
#: The security header of the SPIFFE Workload API; the task service requires it too.
SECURITY_HEADER = ("workload.spiffe.io", "true")
#: How a task may end when its requester ends it.
OUTCOMES = ("completed", "failed", "cancelled")

Ttl = Union[int, float, datetime.timedelta]


@dataclass(frozen=True)
class PolicyDecision:
    """The policy decision that admitted a task."""

    allowed: bool
    approval_required: bool
    #: Seconds; 0: no cap.
    max_ttl_seconds: int
    #: The policies that decided ("file.cedar:id").
    policies: Tuple[str, ...]
    #: One human-readable sentence.
    explanation: str


@dataclass(frozen=True)
class Task:
    """A task as the agent returned it. Times are Unix seconds (0: not yet / never)."""

    id: str
    #: pending_approval, active, completed, failed, cancelled, expired or revoked.
    state: str
    entry_id: str
    #: The identity the task makes live.
    spiffe_id: str
    #: "user:NAME" (an operator) or the SPIFFE ID of the workload that asked.
    requester: str
    reason: str
    ticket: str
    scopes: Tuple[str, ...]
    #: The JWT audiences the task declared (empty with agents that predate them).
    audiences: Tuple[str, ...]
    created_at: int
    activated_at: int
    deadline: int
    ended_at: int
    end_reason: str
    tenant: str
    provisioned: bool
    decision: Optional[PolicyDecision]
    #: The full message, for fields this class does not name.
    proto: tessera_pb2.Task

    @property
    def break_glass(self) -> bool:
        """It started by break-glass, without approval (False with bindings that predate it)."""
        return bool(getattr(self.proto, "break_glass", False))

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def pending(self) -> bool:
        return self.state == "pending_approval"

    @property
    def open(self) -> bool:
        """Not ended yet (active or waiting for approval)."""
        return self.active or self.pending

    @property
    def bound_to(self) -> Tuple[str, int]:
        """What the task is bound to: ("process" | "tree", pid) or ("selectors", 0).
        ("selectors", 0) too with agents or bindings that predate task binding."""
        if not _has_field(tessera_pb2.Task, "binding") or not self.proto.HasField("binding"):
            return ("selectors", 0)
        b = self.proto.binding
        return (b.kind or "selectors", b.pid)

    @classmethod
    def from_proto(cls, t: tessera_pb2.Task) -> "Task":
        d = t.decision if t.HasField("decision") else None
        return cls(
            id=t.id,
            state=t.state,
            entry_id=t.entry_id,
            spiffe_id=t.spiffe_id,
            requester=t.requester,
            reason=t.reason,
            ticket=t.ticket,
            scopes=tuple(t.scopes),
            audiences=tuple(getattr(t, "audiences", ())),
            created_at=t.created_at,
            activated_at=t.activated_at,
            deadline=t.deadline,
            ended_at=t.ended_at,
            end_reason=t.end_reason,
            tenant=t.tenant,
            provisioned=t.provisioned,
            decision=None
            if d is None
            else PolicyDecision(
                allowed=d.allowed,
                approval_required=d.approval_required,
                max_ttl_seconds=d.max_ttl_seconds,
                policies=tuple(d.policies),
                explanation=d.explanation,
            ),
            proto=t,
        )


def socket_target(socket_path: Optional[str] = None) -> str:
    """The gRPC target for a Workload API socket address.

    Accepts what SPIFFE_ENDPOINT_SOCKET holds (`unix:///path`, `unix:/path`) or a plain
    absolute path; reads SPIFFE_ENDPOINT_SOCKET when `socket_path` is None.
    """
    value = socket_path if socket_path is not None else os.environ.get(SOCKET_ENV)
    if not value:
        raise errors.ConfigError(f"no Workload API socket: pass socket_path or set {SOCKET_ENV}")
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        if path.startswith("//") and not path.startswith("///"):
            raise errors.ConfigError(f"{value!r}: a unix socket address has no authority (use unix:///path)")
    elif value.startswith("/"):
        path = value
    else:
        raise errors.ConfigError(f"{value!r}: only Unix domain sockets (unix:///path) are supported")
    if not path.startswith("/") or any(c in path for c in "?#"):
        raise errors.ConfigError(f"{value!r}: expected an absolute socket path")
    return "unix:/" + path.lstrip("/")


def _seconds(ttl: Optional[Ttl]) -> int:
    if ttl is None:
        return 0
    secs = ttl.total_seconds() if isinstance(ttl, datetime.timedelta) else float(ttl)
    if secs <= 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")
    return max(1, int(secs))


def _has_field(message: type, name: str) -> bool:
    return name in message.DESCRIPTOR.fields_by_name


def supports(field: str) -> bool:
    """Whether this package's bindings know TaskSpec field `field` (e.g. "audiences")."""
    return _has_field(tessera_pb2.TaskSpec, field)


class TaskClient:
    """Begins and ends tasks through the local agent.

    `socket_path` defaults to SPIFFE_ENDPOINT_SOCKET, like every SPIFFE client;
    `timeout` (seconds) bounds every call. Use as a context manager or call `close()`.
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: float = 30.0) -> None:
        self._target = socket_target(socket_path)
        self._timeout = timeout
        self._channel = grpc.insecure_channel(self._target)
        self._stub = tessera_pb2_grpc.WorkloadTasksStub(self._channel)

    @property
    def target(self) -> str:
        """The gRPC target this client talks to (`unix:/path`)."""
        return self._target

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "TaskClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: object) -> tessera_pb2.Task:
        rpc = getattr(self._stub, method)
        try:
            return rpc(request, timeout=self._timeout, metadata=(SECURITY_HEADER,))
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, method) from None

    def begin(
        self,
        spiffe_id: Optional[str] = None,
        *,
        entry_id: Optional[str] = None,
        reason: str = "",
        ticket: str = "",
        scopes: Iterable[str] = (),
        audiences: Optional[Iterable[str]] = None,
        ttl: Optional[Ttl] = None,
        requester: Optional[str] = None,
        provision: bool = False,
        selectors: Sequence[str] = (),
        bind: Optional[str] = None,
        bind_pid: Optional[int] = None,
        break_glass: bool = False,
    ) -> Task:
        """Starts a task (`BeginTask`) and returns it.

        Name the just-in-time identity to activate by `spiffe_id` or `entry_id`, or set
        `provision=True` with `spiffe_id` and `selectors` (all among the caller's) for a
        temporary entry that is deleted when the task ends. `ttl` (seconds or timedelta)
        asks for a lifetime; policy may shorten it. `requester` picks which of the caller's
        standing identities asks. The returned task is `active`, or `pending` when policy
        requires approval by someone else.

        The task is bound to this process by default: only it receives the task's SVIDs,
        and the task ends ("requester exited") when it exits. `bind="tree"` includes its
        descendants, `bind="selectors"` every process the identity's selectors match;
        `bind_pid` binds to an ancestor of this process running as the same user instead.

        `break_glass=True` starts the task at once, without approval, where a policy that
        allows it carries @break_glass("allowed") for this workload (`PermissionDenied`
        otherwise); it is capped short, announced to SET receivers and flagged for review
        until an operator other than the requester acknowledges it.

        Raises a `StatusError` subclass with the server's message when refused.
        """
        spec = tessera_pb2.TaskSpec(
            entry_id=entry_id or "",
            spiffe_id=spiffe_id or "",
            provision=provision,
            selectors=list(selectors),
            reason=reason,
            ticket=ticket,
            scopes=list(scopes),
            ttl_seconds=_seconds(ttl),
            requester_spiffe_id=requester or "",
        )
        if bind is not None or bind_pid is not None:
            if not supports("bind"):
                raise errors.ConfigError(
                    "these bindings have no TaskSpec.bind: regenerate them "
                    "(clients/python/tools/generate.py) from a tessera.proto that has it"
                )
            spec.bind = bind or ""
            spec.bind_pid = bind_pid or 0
        if break_glass:
            if not supports("break_glass"):
                # Never send an ordinary request for one the caller asked to break glass.
                raise errors.ConfigError(
                    "these bindings have no TaskSpec.break_glass: regenerate them "
                    "(clients/python/tools/generate.py) from a tessera.proto that has it"
                )
            spec.break_glass = True
        if audiences is not None:
            audiences = list(audiences)
            if not supports("audiences"):
                # Never drop a restriction the caller asked for.
                raise errors.ConfigError(
                    "these bindings have no TaskSpec.audiences: regenerate them "
                    "(clients/python/tools/generate.py) from a tessera.proto that has it"
                )
            spec.audiences.extend(audiences)
        return Task.from_proto(self._call("BeginTask", spec))

    def end(self, task_id: Union[str, Task], outcome: str = "completed", reason: str = "") -> Task:
        """Ends a task the caller started (`EndTask`) as completed, failed or cancelled,
        and returns it in its final state. Its SVIDs are revoked everywhere."""
        tid = task_id.id if isinstance(task_id, Task) else task_id
        return Task.from_proto(
            self._call("EndTask", tessera_pb2.EndTaskRequest(id=tid, outcome=outcome, reason=reason))
        )

    @contextlib.contextmanager
    def task(self, spiffe_id: Optional[str] = None, **begin_args: object) -> Iterator[Task]:
        """Begins a task, yields it, and always ends it.

        The task ends `completed` when the block finishes, `failed` when it raises (the
        reason names the exception's type only: messages may hold secrets) and `cancelled`
        on KeyboardInterrupt or when it never became active. A task that already ended
        (its deadline passed, an operator revoked it) is left as it is.

            with client.task("spiffe://example.org/tools/db", reason="nightly export") as t:
                svid = tessera_tasks.svid.x509_svid(t)
        """
        t = self.begin(spiffe_id, **begin_args)  # type: ignore[arg-type]
        outcome, reason = "completed", ""
        try:
            yield t
        except KeyboardInterrupt:
            outcome, reason = "cancelled", "interrupted"
            raise
        except BaseException as e:
            outcome, reason = "failed", f"raised {type(e).__name__}"
            raise
        finally:
            self._finish(t, outcome, reason)

    def _finish(self, t: Task, outcome: str, reason: str) -> None:
        try:
            self.end(t.id, outcome, reason)
        except errors.FailedPrecondition:
            # Completed/failed is refused for a task that never became active, and any
            # outcome for one that already ended: cancel, which ends any open task.
            try:
                self.end(t.id, "cancelled", reason or "ended before it became active")
            except errors.FailedPrecondition:
                pass  # not open any more: nothing left to end
