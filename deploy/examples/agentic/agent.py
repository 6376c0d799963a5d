#!/usr/bin/env python3
"""An agent runtime that calls a tool under a task-scoped identity, then loses it.

Part of the agentic-runtime example (see README.md beside this file). Standard library
plus py-spiffe (`pip install 'spiffe>=0.3.2,<0.4'`) and the `tessera-agent` binary.

The story, one JSON line per step on stdout ({"step": ..., "ok": true|false, ...}):

  begin_task        `tessera-agent task begin --spiffe-id TOOL_ID --audience TOOL_AUD
                    --scope lookup --reason ...`: the just-in-time tool identity becomes
                    active for this workload, for JWT-SVIDs addressed to the tool only
  fetch_jwt         py-spiffe fetch_jwt_svid(audience={tool}, subject=TOOL_ID); the token
                    carries the task id in its `task_id` claim and `scope` "lookup"
  fetch_other_aud   the same identity for another audience: refused, the task did not
                    declare it
  call_as_runtime   (with --runtime-identity) the runtime's own standing identity calls the
                    tool: refused with 403, only the task identity may call it
  call_with_task    the task token calls the tool: 200, and the tool names our task
  end_task          `tessera-agent task end TASK_ID --outcome completed`
  call_after_end    the same, unexpired token again: refused with 401, the agent's
                    ValidateJWTSVID says the task has ended
  fetch_after_end   no new token for the tool identity either
  done              ok is true when every step went as the story says

Exit status: 0 when the story went as expected, 1 otherwise, 3 when py-spiffe cannot be
imported. The Workload API socket comes from SPIFFE_ENDPOINT_SOCKET.
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

try:
    from spiffe import SpiffeId, WorkloadApiClient
except ImportError as e:
    print(json.dumps({"step": "import", "ok": False, "import_error": str(e)}), flush=True)
    sys.exit(3)


class StoryError(Exception):
    """A step did not go as the story says; the step line has already been printed."""


def step(name, ok, **fields):
    print(json.dumps({"step": name, "ok": ok, **fields}), flush=True)
    if not ok:
        raise StoryError(name)


def claims(token):
    """Decoded JWT payload (for display: the tool, not us, validates tokens)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def tessera_agent(binary, *args):
    """Runs the tessera-agent CLI; returns (parsed JSON or None, stderr).

    Tasks are not part of the SPIFFE Workload API: Tessera serves them as its own gRPC
    service (tessera.v1.WorkloadTasks) on the same socket, and py-spiffe only speaks the
    Workload API. The `tessera-agent task` commands are that service's client, so the
    runtime shells out to them. The agent attests the caller of the socket, here the CLI
    process (same user as this script), and the requester of the task is that caller's
    standing identity, never anything the caller claims.
    """
    out = subprocess.run(
        [binary, *args, "--output", "json"], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        return None, out.stderr.strip()
    return json.loads(out.stdout), out.stderr.strip()


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


def fetch_jwt(client, audience, subject, wait):
    """fetch_jwt_svid, retried for up to `wait` seconds (a new task reaches the agent
    within a moment of starting). Returns (JwtSvid or None, last error)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return client.fetch_jwt_svid(audience={audience}, subject=SpiffeId(subject)), None
        except Exception as e:
            if time.monotonic() >= deadline:
                return None, str(e)
            time.sleep(0.1)


def story(args, client):
    task_id = None
    try:
        # 1. Begin a task for the tool identity.
        # The requester is one of this runtime's standing identities: name it when it has
        # several (the agent checks the caller really holds it).
        # The task declares what its token is for: the tool's audience and one scope.
        # Tokens for any other audience are refused, by the agent and by the server.
        # The task is bound to this runtime's own process (--bind-pid: the CLI is our
        # child): only this process receives its SVIDs, and the task ends by itself if we
        # die before ending it.
        begin = ["task", "begin", "--spiffe-id", args.tool_identity,
                 "--audience", args.tool_audience, "--scope", "lookup",
                 "--reason", args.reason, "--ttl", args.ttl,
                 "--bind-pid", str(os.getpid())]
        if args.runtime_identity:
            begin += ["--requester", args.runtime_identity]
        task, err = tessera_agent(args.tessera_agent, *begin)
        if task is None:
            step("begin_task", False, error=err)
        task_id = task["id"]
        step(
            "begin_task",
            task["state"] == "active",
            task_id=task_id,
            state=task["state"],
            requester=task.get("requester"),
            spiffe_id=task.get("spiffe_id"),
            deadline=task.get("deadline"),
            hint=None if task["state"] == "active" else "policy wants approval: "
            f"tessera-server task approve {task_id}",
        )

        # 2. A JWT-SVID for the tool identity, addressed to the tool.
        svid, err = fetch_jwt(client, args.tool_audience, args.tool_identity, 10)
        if svid is None:
            step("fetch_jwt", False, error=err)
        c = claims(svid.token)
        step(
            "fetch_jwt",
            c.get("task_id") == task_id and c.get("scope") == "lookup",
            spiffe_id=str(svid.spiffe_id),
            audience=sorted(svid.audience),
            task_id=c.get("task_id"),
            scope=c.get("scope"),
            expires_in=c["exp"] - int(time.time()),
        )
        token = svid.token

        # 2b. The task identity for an audience the task did not declare: refused.
        other = args.tool_audience + "-other"
        try:
            client.fetch_jwt_svid(audience={other}, subject=SpiffeId(args.tool_identity))
            step("fetch_other_aud", False, audience=other, error="a token was issued")
        except Exception as e:  # py-spiffe wraps the PermissionDenied status
            step("fetch_other_aud", "outside the audiences" in str(e),
                 audience=other, error=str(e))  # fmt: skip

        # 3. Our standing identity is not enough: the tool wants the task identity.
        if args.runtime_identity:
            own, err = fetch_jwt(client, args.tool_audience, args.runtime_identity, 5)
            if own is None:
                step("call_as_runtime", False, error=err)
            status, body = call_tool(args.tool_url, own.token, args.query)
            step(
                "call_as_runtime",
                status == 403,
                spiffe_id=args.runtime_identity,
                status=status,
                response=body,
            )

        # 4. The call the task is for.
        status, body = call_tool(args.tool_url, token, args.query)
        step(
            "call_with_task",
            status == 200 and body.get("task_id") == task_id,
            status=status,
            response=body,
        )

        # 5. Done: end the task. Its credentials are withdrawn from every agent.
        ended_at = time.monotonic()
        ended, err = tessera_agent(
            args.tessera_agent, "task", "end", task_id, "--outcome", "completed",
            "--reason", "tool call finished",
        )  # fmt: skip
        if ended is None:
            step("end_task", False, task_id=task_id, error=err)
        step("end_task", ended["state"] == "completed", task_id=task_id, state=ended["state"])
        task_id = None

        # 6. The token has not expired, but its task has ended: the tool refuses it.
        while True:
            status, body = call_tool(args.tool_url, token, args.query)
            waited = time.monotonic() - ended_at
            if status != 200 or waited > 5:
                break
            time.sleep(0.05)
        step(
            "call_after_end",
            status == 401 and "has ended" in body.get("detail", ""),
            status=status,
            response=body,
            token_expires_in=c["exp"] - int(time.time()),
            refused_after_ms=round(waited * 1000),
        )

        # 7. And no new token for the tool identity.
        deadline = time.monotonic() + 5
        while True:
            try:
                client.fetch_jwt_svid(
                    audience={args.tool_audience}, subject=SpiffeId(args.tool_identity)
                )
                refused = None
            except Exception as e:
                refused = str(e)
            if refused or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        step("fetch_after_end", refused is not None, error=refused)
        return True
    except StoryError:
        return False
    finally:
        if task_id is not None:
            # Something failed half-way: never leave a task (and its identity) active.
            tessera_agent(
                args.tessera_agent, "task", "end", task_id, "--outcome", "failed",
                "--reason", "agent.py stopped early",
            )  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tool-url", required=True, help="e.g. http://127.0.0.1:8443/lookup")
    p.add_argument("--tool-audience", required=True, help="the tool server's SPIFFE ID")
    p.add_argument("--tool-identity", required=True, help="the just-in-time tool SPIFFE ID")
    p.add_argument("--runtime-identity", help="this runtime's standing SPIFFE ID (optional step)")
    p.add_argument("--reason", default="answer a user question with the lookup tool")
    p.add_argument("--ttl", default="5m")
    p.add_argument("--query", default="tessera task-scoped identities")
    p.add_argument(
        "--tessera-agent",
        default=os.environ.get("TESSERA_AGENT_BIN") or shutil.which("tessera-agent") or "tessera-agent",
        help="path of the tessera-agent binary (default: $TESSERA_AGENT_BIN, then PATH)",
    )
    args = p.parse_args()
    if not os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
        print(json.dumps({"step": "setup", "ok": False, "error": "SPIFFE_ENDPOINT_SOCKET is not set"}))
        sys.exit(1)

    client = WorkloadApiClient(default_timeout=10.0)
    try:
        ok = story(args, client)
    finally:
        client.close()
    print(json.dumps({"step": "done", "ok": ok}), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
