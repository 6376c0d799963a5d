#!/usr/bin/env python3
"""An agent runtime that calls tools under task-scoped identities it begins in-process.

Part of the agentic-runtime example (see README.md beside this file). Needs the repository's
Python task client `tessera_tasks` (`pip install ./clients/python`, which brings grpcio,
protobuf and py-spiffe); run from a checkout, the checkout's copy is used. Everything goes
through the agent's socket (SPIFFE_ENDPOINT_SOCKET): tasks through the task service
(`tessera.v1.WorkloadTasks`), SVIDs through the SPIFFE Workload API. Nothing is shelled out.

Every task is bound to this process (the client's default): only this process receives its
SVIDs, and the agent ends it ("requester exited") if the process dies before ending it.

The story (default), one JSON line per step on stdout ({"step": ..., "ok": true|false, ...}):

  begin_task        BeginTask for --tool-identity, declaring the tool's audience and the
                    scope "lookup", bound to this process
  fetch_jwt         a JWT-SVID of the task for the tool's audience; it carries the task id
                    (`task_id`) and the scope (`scope`)
  fetch_other_aud   the same identity for another audience: refused, the task did not
                    declare it
  call_as_runtime   (with --runtime-identity) the runtime's own standing identity calls the
                    tool: refused with 403, only the tool identities may call it
  call_with_task    the task token calls the tool: 200, and the tool names our task
  end_task          EndTask, completed
  call_after_end    the same, unexpired token again until refused: 401 revoked_token, the
                    tool saw the task's entry in its status list flip (offline)
  fetch_after_end   no new token for the tool identity either
  parallel_call     (with --second-tool-identity) two tool calls at once, one per thread,
                    each as its own task (own task id, own JWT-SVID); both tasks are active
                    at the same time; one line per call
  parallel          both calls answered 200 for their own task; after the first task ended,
                    the second task's token still works
  done              ok is true when every step went as the story says

With --hold, the runtime begins a task, calls the tool once (`hold_call`), prints its token
(`holding`, with the task id and its pid) and waits to be killed: the test that kills it
checks that the task ends by itself and that the tool refuses the token.

Exit status: 0 when the story went as expected, 1 otherwise, 3 when tessera_tasks or its
dependencies cannot be imported.
"""

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# Run from a checkout: the checkout's client, not an installed copy.
_CHECKOUT_CLIENT = Path(__file__).resolve().parents[3] / "clients" / "python"
if (_CHECKOUT_CLIENT / "tessera_tasks").is_dir():
    sys.path.insert(0, str(_CHECKOUT_CLIENT))

try:
    from spiffe import SpiffeId, WorkloadApiClient

    from tessera_tasks import TaskClient, TaskError
    from tessera_tasks.svid import claims_of, jwt_svid
except ImportError as e:
    print(json.dumps({"step": "import", "ok": False, "import_error": str(e)}), flush=True)
    sys.exit(3)


class StoryError(Exception):
    """A step did not go as the story says; the step line has already been printed."""


_print_lock = threading.Lock()


def step(name, ok, **fields):
    with _print_lock:
        print(json.dumps({"step": name, "ok": ok, **fields}), flush=True)
    if not ok:
        raise StoryError(name)


def call_tool(url, token, query):
    """POSTs to the tool; returns (HTTP status, JSON body)."""
    req = urllib.request.Request(
        url,
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def begin(client, args, identity, scope):
    """A task for `identity`, declaring the tool's audience and `scope`, bound to this
    process (the client's default binding)."""
    return client.begin(
        identity,
        audiences=[args.tool_audience],
        scopes=[scope],
        reason=args.reason,
        ttl=args.ttl,
        requester=args.runtime_identity,
    )


def task_fields(task):
    return {
        "task_id": task.id,
        "state": task.state,
        "spiffe_id": task.spiffe_id,
        "requester": task.requester,
        "audiences": list(task.audiences),
        "scopes": list(task.scopes),
        "bound_to": list(task.bound_to),
        "deadline": task.deadline,
    }


def sequential(args, client, open_tasks):
    """Steps begin_task .. fetch_after_end."""
    task = begin(client, args, args.tool_identity, "lookup")
    open_tasks.add(task.id)
    step(
        "begin_task",
        task.active and task.bound_to == ("process", os.getpid()),
        own_pid=os.getpid(),
        hint=None if task.active else f"policy wants approval: tessera-server task approve {task.id}",
        **task_fields(task),
    )

    svid = jwt_svid(task, args.tool_audience, timeout=10)
    c = claims_of(svid.token)
    step(
        "fetch_jwt",
        c.get("task_id") == task.id and c.get("scope") == "lookup",
        spiffe_id=str(svid.spiffe_id),
        audience=sorted(svid.audience),
        task_id=c.get("task_id"),
        scope=c.get("scope"),
        iss=c.get("iss"),
        status=c.get("status"),
        expires_in=c["exp"] - int(time.time()),
    )
    token = svid.token

    # The task identity for an audience the task did not declare: refused.
    other = args.tool_audience + "-other"
    with WorkloadApiClient() as wl:
        try:
            wl.fetch_jwt_svid(audience={other}, subject=SpiffeId(args.tool_identity))
            step("fetch_other_aud", False, audience=other, error="a token was issued")
        except Exception as e:  # py-spiffe wraps the PermissionDenied status
            step("fetch_other_aud", "outside the audiences" in str(e), audience=other, error=str(e))

        # Our standing identity is not enough: the tool wants a tool identity.
        if args.runtime_identity:
            own = wl.fetch_jwt_svid(audience={args.tool_audience}, subject=SpiffeId(args.runtime_identity))
            status, body = call_tool(args.tool_url, own.token, args.query)
            step("call_as_runtime", status == 403, spiffe_id=args.runtime_identity, status=status, response=body)

    # The call the task is for.
    status, body = call_tool(args.tool_url, token, args.query)
    step("call_with_task", status == 200 and body.get("task_id") == task.id, status=status, response=body)

    # Done: end the task. Its entry in the status list flips at once.
    ended_at = time.monotonic()
    ended = client.end(task, "completed", "tool call finished")
    open_tasks.discard(task.id)
    step("end_task", ended.state == "completed", task_id=task.id, state=ended.state, end_reason=ended.end_reason)

    # The token has not expired, but its task has ended: once the tool's cached copy of the
    # status list is older than the list's ttl, the tool refuses it.
    while True:
        status, body = call_tool(args.tool_url, token, args.query)
        waited = time.monotonic() - ended_at
        if status != 200 or waited > args.refusal_wait:
            break
        time.sleep(0.05)
    step(
        "call_after_end",
        status == 401 and body.get("error") == "revoked_token",
        status=status,
        response=body,
        token_expires_in=c["exp"] - int(time.time()),
        refused_after_ms=round(waited * 1000),
    )

    # And no new token for the tool identity.
    deadline = time.monotonic() + 5
    with WorkloadApiClient() as wl:
        while True:
            try:
                wl.fetch_jwt_svid(audience={args.tool_audience}, subject=SpiffeId(args.tool_identity))
                refused = None
            except Exception as e:
                refused = str(e)
            if refused or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    step("fetch_after_end", refused is not None, error=refused)


def parallel(args, client, open_tasks):
    """Two tool calls at once, each in its own thread under its own task."""
    calls = [("first", args.tool_identity, "lookup"), ("second", args.second_tool_identity, "fetch")]
    # Both tasks are active before either thread fetches its token, both call the tool
    # together, and the first task ends before the second calls again.
    begun = threading.Barrier(len(calls), timeout=30)
    calling = threading.Barrier(len(calls), timeout=30)
    first_ended = threading.Event()
    results = {}

    def run(name, identity, scope):
        r = results[name] = {"call": name}
        try:
            task = begin(client, args, identity, scope)
            open_tasks.add(task.id)
            r.update(task_id=task.id, state=task.state, began=time.monotonic())
            begun.wait()
            svid = jwt_svid(task, args.tool_audience, timeout=10)
            c = claims_of(svid.token)
            r.update(jwt_task_id=c.get("task_id"), scope=c.get("scope"))
            calling.wait()
            r["status"], r["response"] = call_tool(args.tool_url, svid.token, f"{args.query} ({name})")
            if name == "first":
                r["end_state"] = client.end(task, "completed", "tool call finished").state
                open_tasks.discard(task.id)
                first_ended.set()
            else:
                if not first_ended.wait(30):
                    raise TimeoutError("the first task did not end")
                # The other task has ended; this one's token still works.
                r["status_after_other_ended"], _ = call_tool(args.tool_url, svid.token, args.query)
                r["end_state"] = client.end(task, "completed", "tool call finished").state
                open_tasks.discard(task.id)
            r["ended"] = time.monotonic()
        except Exception as e:  # noqa: BLE001  (reported on the thread's step line)
            r["error"] = f"{type(e).__name__}: {e}"
            begun.abort()
            calling.abort()
            first_ended.set()

    threads = [threading.Thread(target=run, args=c, name=c[0]) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, _, _ in calls:
        r = dict(results[name])
        ok = (
            "error" not in r
            and r.get("status") == 200
            and r["response"].get("task_id") == r["task_id"] == r["jwt_task_id"]
            and r["end_state"] == "completed"
        )
        r.pop("began", None), r.pop("ended", None)
        step("parallel_call", ok, **r)
    first, second = results["first"], results["second"]
    step(
        "parallel",
        first["task_id"] != second["task_id"]
        # Both were active at once: each began before the other ended.
        and first["began"] < second["ended"]
        and second["began"] < first["ended"]
        and second["status_after_other_ended"] == 200,
        task_ids=[first["task_id"], second["task_id"]],
        overlap_ms=round((min(first["ended"], second["ended"]) - max(first["began"], second["began"])) * 1000),
        second_after_first_ended=second["status_after_other_ended"],
    )


def hold(args, client):
    """Begins a task, calls the tool once, prints the token and waits to be killed."""
    task = begin(client, args, args.tool_identity, "lookup")
    step("begin_task", task.active, own_pid=os.getpid(), **task_fields(task))
    token = jwt_svid(task, args.tool_audience, timeout=10).token
    status, body = call_tool(args.tool_url, token, args.query)
    step("hold_call", status == 200 and body.get("task_id") == task.id, status=status, response=body)
    step("holding", True, task_id=task.id, pid=os.getpid(), token=token)
    while True:  # until killed; the task ends when this process does
        time.sleep(3600)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tool-url", required=True, help="e.g. http://127.0.0.1:8443/lookup")
    p.add_argument("--tool-audience", required=True, help="the audience the tool server checks")
    p.add_argument("--tool-identity", required=True, help="a just-in-time tool SPIFFE ID")
    p.add_argument("--second-tool-identity", help="another just-in-time tool SPIFFE ID (parallel step)")
    p.add_argument("--runtime-identity", help="this runtime's standing SPIFFE ID (requester; optional step)")
    p.add_argument("--reason", default="answer a user question with the lookup tool")
    p.add_argument("--ttl", type=int, default=300, help="task lifetime asked for, seconds")
    p.add_argument("--query", default="tessera task-scoped identities")
    p.add_argument(
        "--refusal-wait",
        type=float,
        default=30,
        help="seconds call_after_end waits for the tool to refuse (its status list cache)",
    )
    p.add_argument("--hold", action="store_true", help="begin a task, print its token, wait to be killed")
    args = p.parse_args()
    if not os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
        print(json.dumps({"step": "setup", "ok": False, "error": "SPIFFE_ENDPOINT_SOCKET is not set"}))
        sys.exit(1)

    open_tasks = set()
    with TaskClient() as client:
        try:
            if args.hold:
                hold(args, client)
            sequential(args, client, open_tasks)
            if args.second_tool_identity:
                parallel(args, client, open_tasks)
            ok = True
        except StoryError:
            ok = False
        except (TaskError, TimeoutError) as e:
            # A refusal or an SVID that did not come: the story stops here.
            print(json.dumps({"step": "error", "ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
            ok = False
        finally:
            # Something failed half-way: never leave a task (and its identity) active. (The
            # agent would end it when this process exits anyway.)
            for task_id in open_tasks:
                try:
                    client.end(task_id, "failed", "agent.py stopped early")
                except TaskError:
                    pass
    print(json.dumps({"step": "done", "ok": ok}), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
