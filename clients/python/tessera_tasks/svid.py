"""A task's SVIDs through the unmodified SPIFFE client, py-spiffe (`spiffe` package).

A task's identity reaches the caller like any other: on the SPIFFE Workload API, once the
task is active and the agent has heard of it (a pending task after its approval). These
helpers wait for it with a bounded timeout and pick the SVID of *this* task: an X.509-SVID
names its task in a Subject organizational unit `task:<id>`, a JWT-SVID in its `task_id`
claim, so an SVID of an earlier task of the same identity is never mistaken for it.

    with TaskClient() as client, client.task(TOOL, reason="export") as t:
        cert = x509_svid(t, timeout=10)            # spiffe.X509Svid
        token = jwt_svid(t, "tools", timeout=10)   # spiffe.JwtSvid
"""

import base64
import json
import threading
import time
from typing import Callable, List, Optional, Union

import grpc
from cryptography.x509.oid import NameOID
from spiffe import JwtSvid, SpiffeId, WorkloadApiClient, X509Svid
from spiffe.workloadapi.x509_context import X509Context

from .client import Task
from .errors import SvidUnavailable

#: Prefix of the Subject OU that names a task in its X.509-SVIDs.
SUBJECT_OU_PREFIX = "task:"
#: The JWT-SVID claim that names a task.
JWT_CLAIM = "task_id"

TaskRef = Union[Task, str]


def task_id_of(svid: X509Svid) -> Optional[str]:
    """The task an X.509-SVID belongs to (its Subject OU `task:<id>`), if any."""
    for attr in svid.leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode()
        if value.startswith(SUBJECT_OU_PREFIX):
            return value[len(SUBJECT_OU_PREFIX):]
    return None


def claims_of(token: str) -> dict:
    """A JWT's claims, NOT verified: to tell tokens apart, never to trust them."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as e:
        raise ValueError(f"not a JWT: {e}") from None


def _find(ctx: X509Context, task: Task) -> Optional[X509Svid]:
    for svid in ctx.x509_svids:
        if str(svid.spiffe_id) == task.spiffe_id and task_id_of(svid) == task.id:
            return svid
    return None


class X509Watch:
    """An open X.509 stream of the Workload API (py-spiffe `stream_x509_contexts`) that
    keeps the latest context; `wait(predicate, timeout)` blocks until one satisfies it.

    Opening it before beginning or ending a task lets the caller see exactly when the
    agent's update arrives.
    """

    def __init__(self, socket_path: Optional[str] = None) -> None:
        self._client = WorkloadApiClient(socket_path)
        self._cond = threading.Condition()
        self._latest: Optional[X509Context] = None
        self._latest_at: Optional[float] = None
        self._updates = 0
        self._error: Optional[str] = None
        self._cancel = self._client.stream_x509_contexts(self._on_update, self._on_error)

    def _on_update(self, ctx: X509Context) -> None:
        with self._cond:
            self._latest = ctx
            self._latest_at = time.monotonic()
            self._updates += 1
            self._cond.notify_all()

    def _on_error(self, err: Exception) -> None:
        with self._cond:
            self._error = str(err)
            self._cond.notify_all()

    @property
    def latest_at(self) -> Optional[float]:
        """When (`time.monotonic()`) the latest context arrived."""
        return self._latest_at

    @property
    def updates(self) -> int:
        """How many contexts the stream delivered so far."""
        return self._updates

    def wait(self, predicate: Callable[[X509Context], bool], timeout: float, what: str) -> X509Context:
        """The first context (the latest one, or a later update) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._latest is not None and predicate(self._latest):
                    return self._latest
                if self._error is not None:
                    # py-spiffe retries what may recover; an error here ends the stream,
                    # so nothing more will arrive.
                    raise SvidUnavailable(f"{what}: the Workload API stream failed", self._error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SvidUnavailable(f"{what}: not within {timeout:g} s", self._error)
                self._cond.wait(left)

    def x509_svid(self, task: Task, timeout: float = 30.0) -> X509Svid:
        """Waits for the task's X.509-SVID to be on the stream and returns it."""
        ctx = self.wait(lambda c: _find(c, task) is not None, timeout, f"X.509-SVID of task {task.id}")
        svid = _find(ctx, task)
        assert svid is not None
        return svid

    def x509_svid_gone(self, task: Task, timeout: float = 30.0) -> None:
        """Waits until the stream no longer carries the task's X.509-SVID (after its end)."""
        self.wait(lambda c: _find(c, task) is None, timeout, f"removal of task {task.id}'s X.509-SVID")

    def close(self) -> None:
        self._cancel.cancel()
        self._client.close()

    def __enter__(self) -> "X509Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def x509_svid(task: Task, timeout: float = 30.0, socket_path: Optional[str] = None) -> X509Svid:
    """The task's X.509-SVID (with its private key), once the agent serves it.

    Raises `SvidUnavailable` when it is not served within `timeout` seconds (the task is
    pending approval, ended, or the caller is not the process it is for).
    """
    with X509Watch(socket_path) as watch:
        return watch.x509_svid(task, timeout)


def jwt_svid(
    task: Task,
    audience: Union[str, List[str]],
    timeout: float = 30.0,
    socket_path: Optional[str] = None,
) -> JwtSvid:
    """A JWT-SVID of the task's identity for `audience`, once the agent issues one.

    Retries while the Workload API answers PermissionDenied or Unavailable (not issued
    yet), and returns only a token whose `task_id` claim names this task. Raises
    `SvidUnavailable` after `timeout` seconds, with the agent's last message.
    """
    audiences = {audience} if isinstance(audience, str) else set(audience)
    subject = SpiffeId(task.spiffe_id)
    deadline = time.monotonic() + timeout
    last: Optional[str] = None
    pause = 0.02
    with WorkloadApiClient(socket_path) as client:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SvidUnavailable(f"JWT-SVID of task {task.id}: not within {timeout:g} s", last)
            try:
                svid = client.fetch_jwt_svid(audiences, subject, timeout=max(left, 0.1))
                if claims_of(svid.token).get(JWT_CLAIM) == task.id:
                    return svid
                last = f"a token for {task.spiffe_id} without {JWT_CLAIM}={task.id}"
            except Exception as e:  # py-spiffe wraps the gRPC error as __cause__
                cause = e.__cause__
                code = cause.code() if isinstance(cause, grpc.Call) else None
                if code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE):
                    raise
                last = str(e)
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 0.5)
