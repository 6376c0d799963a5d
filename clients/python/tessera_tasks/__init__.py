"""Client for the Tessera agent's task service (`tessera.v1.WorkloadTasks`).

An agent runtime begins a task for a just-in-time identity, uses the task's SVIDs while it
runs, and ends it, in-process instead of through the `tessera-agent task` CLI:

    from tessera_tasks import TaskClient, PermissionDenied
    from tessera_tasks.svid import x509_svid

    with TaskClient() as client:                 # SPIFFE_ENDPOINT_SOCKET
        with client.task("spiffe://example.org/tools/search", reason="user request") as t:
            svid = x509_svid(t, timeout=10)       # py-spiffe X509Svid of this task
            ...
        # the task has ended (completed, or failed if the block raised)

`tessera_tasks.svid` needs py-spiffe; the client itself only grpcio and protobuf.
"""

from .client import OUTCOMES, SECURITY_HEADER, PolicyDecision, Task, TaskClient, socket_target, supports
from .errors import (
    AlreadyExists,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StatusError,
    SvidUnavailable,
    TaskError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

__version__ = "0.1.0"

__all__ = [
    "OUTCOMES",
    "SECURITY_HEADER",
    "AlreadyExists",
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PolicyDecision",
    "ResourceExhausted",
    "StatusError",
    "SvidUnavailable",
    "Task",
    "TaskClient",
    "TaskError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "socket_target",
    "supports",
]
