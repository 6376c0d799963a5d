#!/usr/bin/env python3
"""A tiny HTTP tool that only answers callers holding a task-scoped JWT-SVID.

Part of the agentic-runtime example (see README.md beside this file). Standard library
plus py-spiffe (`pip install 'spiffe>=0.3.2,<0.4'`), nothing else.

The server runs under its own standing SPIFFE identity (--spiffe-id) and uses it as the
audience callers must put in their tokens. For every request it:

  1. takes `Authorization: Bearer <JWT-SVID>`                 (else 401 missing_token)
  2. has the local Tessera agent validate it with ValidateJWTSVID for that audience: the
     signature, expiry, audience, and whether the token's task has ended (else 401
     invalid_token, with the agent's reason, e.g. "... which has ended (completed)")
  3. requires the caller's SPIFFE ID to be one of --allow-spiffe-id (else 403 forbidden)
  4. requires a `task_id` claim: the tool works only inside a task  (else 403 no_task)

and answers 200 with the task the call belongs to. Validation goes through the Workload API
on purpose: offline validation against the JWT bundle checks signature and expiry but
cannot know that a task ended, so an ended task's token would pass until it expires.

Every request is logged as one JSON line on stdout; the first line is
{"event": "ready", "port": N, ...} once the server listens (use --port 0 for a free port).
The Workload API socket comes from SPIFFE_ENDPOINT_SOCKET (unix:///path/to/api.sock).

Exit status: 0 on SIGINT/SIGTERM, 1 when the server cannot start (for instance its own
identity is not registered), 3 when py-spiffe cannot be imported.
"""

import argparse
import base64
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from spiffe import WorkloadApiClient
except ImportError as e:
    print(json.dumps({"event": "error", "import_error": str(e)}), flush=True)
    sys.exit(3)


def log(event, **fields):
    print(json.dumps({"event": event, "time": round(time.time(), 3), **fields}), flush=True)


def token_claims(token):
    """The claims of a token the agent has just validated (the signature is already checked).

    py-spiffe 0.3's JwtSvid keeps the claims but does not expose them, so read the payload.
    """
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class ToolHandler(BaseHTTPRequestHandler):
    server_version = "tessera-example-tool/1"

    # Set on the class by main().
    client = None
    audience = ""
    allowed = frozenset()

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def reply(self, status, body, **log_fields):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="tool"')
        self.end_headers()
        self.wfile.write(data)
        log("call", method=self.command, path=self.path, status=status, **log_fields)

    def refuse(self, status, error, detail, **log_fields):
        self.reply(status, {"error": error, "detail": detail}, error=error, detail=detail, **log_fields)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            request = json.loads(raw) if raw else {}
        except ValueError:
            request = {"raw": raw.decode(errors="replace")}
        self.handle_call(request)

    def do_GET(self):
        self.handle_call({})

    def handle_call(self, request):
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self.refuse(401, "missing_token", "send Authorization: Bearer <JWT-SVID>")
            return
        try:
            svid = self.client.validate_jwt_svid(token, self.audience)
        except Exception as e:  # py-spiffe raises its own error types carrying the reason
            self.refuse(401, "invalid_token", str(e))
            return
        caller = str(svid.spiffe_id)
        task_id = token_claims(token).get("task_id")
        if caller not in self.allowed:
            self.refuse(
                403,
                "forbidden",
                f"{caller} may not call this tool (allowed: {', '.join(sorted(self.allowed))})",
                caller=caller,
                task_id=task_id,
            )
            return
        if not task_id:
            self.refuse(403, "no_task", "the token is not bound to a task", caller=caller)
            return
        self.reply(
            200,
            {
                "ok": True,
                "caller": caller,
                "task_id": task_id,
                "audience": self.audience,
                "result": f"looked up {request.get('query', '')!r} for task {task_id}",
            },
            caller=caller,
            task_id=task_id,
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    p.add_argument(
        "--spiffe-id",
        required=True,
        help="this server's own standing SPIFFE ID (must be served to it); the default audience",
    )
    p.add_argument("--audience", help="audience callers must use (default: --spiffe-id)")
    p.add_argument(
        "--allow-spiffe-id",
        action="append",
        required=True,
        help="SPIFFE ID allowed to call the tool (repeatable)",
    )
    p.add_argument("--wait", type=float, default=30, help="seconds to wait for --spiffe-id")
    args = p.parse_args()
    if not os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
        log("error", error="SPIFFE_ENDPOINT_SOCKET is not set (unix:///path/to/api.sock)")
        sys.exit(1)

    client = WorkloadApiClient(default_timeout=5.0)
    # Serve nothing before our own identity is served to us (a new entry reaches the agent
    # within a moment; wait up to --wait seconds for it).
    deadline = time.monotonic() + args.wait
    while True:
        try:
            own = [str(s.spiffe_id) for s in client.fetch_x509_svids()]
            problem = None if args.spiffe_id in own else f"not among this process's {own}"
        except Exception as e:
            problem = str(e)
        if problem is None:
            break
        if time.monotonic() >= deadline:
            log("error", error=f"no identity {args.spiffe_id} for this server: {problem}")
            sys.exit(1)
        time.sleep(0.2)

    ToolHandler.client = client
    ToolHandler.audience = args.audience or args.spiffe_id
    ToolHandler.allowed = frozenset(args.allow_spiffe_id)
    httpd = ThreadingHTTPServer((args.host, args.port), ToolHandler)
    httpd.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(
        "ready",
        host=args.host,
        port=httpd.server_address[1],
        spiffe_id=args.spiffe_id,
        audience=ToolHandler.audience,
        allowed=sorted(ToolHandler.allowed),
    )
    try:
        httpd.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        httpd.server_close()
        client.close()


if __name__ == "__main__":
    main()
