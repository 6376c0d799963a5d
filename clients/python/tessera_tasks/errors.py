"""Typed errors: one class per gRPC status the task service answers with.

Every refusal by the agent (or by the server it asks) is a `StatusError` subclass that
carries the gRPC code and the server's own message, e.g. the Cedar policy that denied a
task (`tasks.cedar:reason-required`). Catch the specific class to act on it, or
`TaskError` for anything this package raises.
"""

from typing import Dict, Optional, Type

import grpc


class TaskError(Exception):
    """Base class of every error this package raises."""


class ConfigError(TaskError, ValueError):
    """The client was configured wrongly: no socket given and SPIFFE_ENDPOINT_SOCKET unset,
    or a socket address that is not a Unix socket."""


class StatusError(TaskError):
    """The agent answered the call with a gRPC error status.

    Attributes:
        code: the `grpc.StatusCode`.
        message: the status message of the agent or the server, verbatim.
        method: the RPC that failed, e.g. "BeginTask".
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, method: str = "") -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.method = method

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        return f"{where}{self.message} ({self.code.name})"


class InvalidArgument(StatusError):
    """The request is malformed (unknown outcome, bad selector, missing security header...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StatusError):
    """No such task or just-in-time entry, as far as this caller may know."""

    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(StatusError):
    """Policy or attestation refused the caller (no standing identity, policy denied...)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(StatusError):
    """The task is in the wrong state (already ended, never became active...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(StatusError):
    """A conflicting task exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(StatusError):
    """A quota or rate limit was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(StatusError):
    """The agent (or its server) cannot be reached or is not ready; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(StatusError):
    """The call did not complete within its timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(StatusError):
    """The caller could not be authenticated."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unimplemented(StatusError):
    """The agent does not serve this method (an older agent)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(StatusError):
    """The agent or server failed; details are in its log, not in the message."""

    code = grpc.StatusCode.INTERNAL


class SvidUnavailable(TaskError, TimeoutError):
    """The task's SVID did not appear on the Workload API (or did not go away) in time.

    Attributes:
        last_error: the last Workload API error seen while waiting, if any.
    """

    def __init__(self, message: str, last_error: Optional[str] = None) -> None:
        super().__init__(message if last_error is None else f"{message} (last error: {last_error})")
        self.last_error = last_error


_BY_CODE: Dict[grpc.StatusCode, Type[StatusError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        PermissionDenied,
        FailedPrecondition,
        AlreadyExists,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        Unimplemented,
        Internal,
    )
}


def from_rpc_error(err: grpc.RpcError, method: str = "") -> StatusError:
    """The typed error for a failed call (`StatusError` itself for codes without a class)."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = (err.details() if isinstance(err, grpc.Call) else None) or str(code.name).lower()
    cls = _BY_CODE.get(code, StatusError)
    return cls(message, code=code, method=method)
