#!/usr/bin/env python3
"""Drives the repository's Python task client (clients/python, `tessera_tasks`) against a
real agent, for tests/tests/e2e/client_python.rs. The SVIDs are fetched with the
unmodified py-spiffe through `tessera_tasks.svid`.

The package is imported from this checkout (clients/python is put first on sys.path), so
the test covers the tree, never an installed copy. The socket comes from
SPIFFE_ENDPOINT_SOCKET. Prints ONE JSON object on stdout:

  lifecycle  begin a task for --spiffe-id, wait for its X.509-SVID and a JWT-SVID, end it,
             wait for the X.509-SVID to leave the stream; then the task() context manager,
             leaving its block normally and by an exception. Reports each step, with times
             in ms measured from the calls to begin and end.
  errors     the refusals the client maps to typed errors.

Exit status: 0 when the JSON was printed (errors are data: the Rust test judges them),
3 when grpcio, protobuf or py-spiffe cannot be imported.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

try:
    import grpc
    import google.protobuf
    import spiffe
    from cryptography.hazmat.primitives import serialization
    from spiffe import WorkloadApiClient

    import tessera_tasks
    from tessera_tasks import TaskClient
    from tessera_tasks._proto import tessera_pb2, tessera_pb2_grpc
    from tessera_tasks.svid import X509Watch, claims_of, jwt_svid, task_id_of
except ImportError as e:  # never skip silently: the Rust test turns this into a failure
    print(json.dumps({"import_error": str(e)}))
    sys.exit(3)


def versions():
    from importlib.metadata import version

    return {
        "py_spiffe": version("spiffe"),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "tessera_tasks": tessera_tasks.__version__,
    }


def ms_since(t0):
    return round((time.monotonic() - t0) * 1000.0, 1)


def task_json(t):
    return {
        "id": t.id,
        "state": t.state,
        "spiffe_id": t.spiffe_id,
        "requester": t.requester,
        "reason": t.reason,
        "scopes": list(t.scopes),
        "audiences": list(t.audiences),
        "deadline": t.deadline,
        "end_reason": t.end_reason,
        "policies": list(t.decision.policies) if t.decision else None,
        "bound_to": list(t.bound_to),
        "own_pid": os.getpid(),
    }


def error_json(e):
    out = {"error_class": type(e).__name__, "error": str(e)}
    if isinstance(e, tessera_tasks.StatusError):
        out.update(code=e.code.name, message=e.message, method=e.method)
    return out


def attempt(f):
    """f()'s result as {"ok": ...}, or its error as data."""
    try:
        return {"ok": f()}
    except Exception as e:
        return error_json(e)


def begin_args(args):
    extra = {"reason": "python client e2e", "scopes": ["read"]}
    # Tasks declare the JWT audiences they use once the bindings know the field.
    if tessera_tasks.supports("audiences"):
        extra["audiences"] = [args.audience]
    return extra


def cmd_lifecycle(args):
    out = {"audiences_supported": tessera_tasks.supports("audiences")}
    with TaskClient(timeout=args.timeout) as client, X509Watch() as watch:
        t0 = time.monotonic()
        task = client.begin(args.spiffe_id, **begin_args(args))
        out["begin_ms"] = ms_since(t0)
        out["begin"] = task_json(task)
        svid = watch.x509_svid(task, timeout=args.timeout)
        # From the call to begin to the stream update that carried the SVID.
        out["svid_ms"] = round((watch.latest_at - t0) * 1000.0, 1)
        out["x509"] = {
            "spiffe_id": str(svid.spiffe_id),
            "task_id": task_id_of(svid),
            "leaf_pem": svid.leaf.public_bytes(serialization.Encoding.PEM).decode(),
            "serial": format(svid.leaf.serial_number, "x"),
        }
        t1 = time.monotonic()
        token = jwt_svid(task, args.audience, timeout=args.timeout)
        out["jwt_ms"] = ms_since(t1)
        out["jwt"] = {"token": token.token, "claims": claims_of(token.token)}

        t2 = time.monotonic()
        ended = client.end(task, "completed", "done")
        out["end_ms"] = ms_since(t2)
        out["end"] = task_json(ended)
        watch.x509_svid_gone(task, timeout=args.timeout)
        # From the call to end to the stream update without the SVID (it may come before
        # the answer to end: the agent hears the revocation on its own sync stream).
        out["gone_ms"] = round((watch.latest_at - t2) * 1000.0, 1)
        out["stream_updates"] = watch.updates

    # After its end: no JWT-SVID of the identity, and the task cannot be ended twice.
    with WorkloadApiClient() as wl:
        out["jwt_after_end"] = attempt(
            lambda: wl.fetch_jwt_svid({args.audience}, spiffe.SpiffeId(args.spiffe_id), timeout=args.timeout).token
        )
    with TaskClient(timeout=args.timeout) as client:
        out["end_again"] = attempt(lambda: task_json(client.end(task.id)))

        # The context manager ends the task however its block is left.
        with client.task(args.spiffe_id, **begin_args(args)) as t:
            out["cm_ok"] = {"begin": task_json(t), "svid_task_id": task_id_of(tessera_tasks.svid.x509_svid(t, args.timeout))}
        out["cm_ok"]["end_again"] = attempt(lambda: task_json(client.end(t.id)))
        try:
            with client.task(args.spiffe_id, **begin_args(args)) as t:
                out["cm_raise"] = {"begin": task_json(t)}
                raise RuntimeError("secret detail that must not reach the audit log")
        except RuntimeError:
            out["cm_raise"]["propagated"] = True
        out["cm_raise"]["end_again"] = attempt(lambda: task_json(client.end(t.id)))
    return out


def cmd_errors(args):
    out = {}
    with TaskClient(timeout=args.timeout) as client:
        out["unknown_identity"] = attempt(lambda: client.begin(args.unknown_id, reason="x").id)
        out["policy_denied"] = attempt(lambda: client.begin(args.denied_id, reason="x").id)
        out["no_reason"] = attempt(lambda: client.begin(args.spiffe_id).id)
        out["foreign_requester"] = attempt(
            lambda: client.begin(args.spiffe_id, reason="x", requester="spiffe://example.org/not/mine").id
        )
        out["nothing_named"] = attempt(lambda: client.begin(reason="x").id)
        out["end_unknown"] = attempt(lambda: client.end("no-such-task").id)
        out["end_bad_outcome"] = attempt(lambda: client.end("no-such-task", outcome="exploded").id)
        # A workload may not revoke (that is for operators), not even its own task.
        task = client.begin(args.spiffe_id, **begin_args(args))
        out["end_revoked"] = attempt(lambda: client.end(task, outcome="revoked").id)
        out["end_cancelled"] = attempt(lambda: task_json(client.end(task, outcome="cancelled")))
    # The security header is what the agent checks first: the raw stub without it.
    with grpc.insecure_channel(tessera_tasks.socket_target()) as ch:
        stub = tessera_pb2_grpc.WorkloadTasksStub(ch)
        try:
            stub.EndTask(tessera_pb2.EndTaskRequest(id="x"), timeout=args.timeout)
            out["no_header"] = {"ok": True}
        except grpc.RpcError as e:
            out["no_header"] = error_json(tessera_tasks.errors.from_rpc_error(e, "EndTask"))
    out["no_socket"] = attempt(lambda: TaskClient("unix:///nonexistent/dir/api.sock", timeout=2).end("x").id)
    out["tcp_socket"] = attempt(lambda: TaskClient("tcp://127.0.0.1:1").target)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["lifecycle", "errors"])
    p.add_argument("--spiffe-id", required=True, help="a just-in-time identity the policy lets the caller activate")
    p.add_argument("--audience", default="tools")
    p.add_argument("--denied-id", default="", help="a just-in-time identity the policy refuses")
    p.add_argument("--unknown-id", default="spiffe://example.org/tools/unknown")
    p.add_argument("--timeout", type=float, default=15.0)
    args = p.parse_args()
    out = {"versions": versions(), "mode": args.mode, "error_class": None, "error": None}
    try:
        out.update({"lifecycle": cmd_lifecycle, "errors": cmd_errors}[args.mode](args))
    except Exception as e:  # report, let the Rust test decide
        out.update(error_json(e))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
