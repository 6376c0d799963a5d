#!/usr/bin/env python3
"""A tiny HTTP tool that validates task JWT-SVIDs offline, as any OIDC relying party would.

Part of the agentic-runtime example (see README.md beside this file). Standard library plus
PyJWT with cryptography (`pip install 'PyJWT[crypto]'`); it never talks to a Tessera agent
or server API, only to the server's public relying-party listener over HTTPS:

  at start   GET <issuer>/.well-known/openid-configuration (trusting only --cafile, the web
             PKI of the listener, never the SPIFFE bundle); its `issuer` must be --issuer;
             the JWK set comes from its `jwks_uri` (PyJWT's PyJWKClient, cached, refreshed
             when a token names an unknown key)

and for every request:

  1. takes `Authorization: Bearer <JWT-SVID>`                         (else 401 missing_token)
  2. verifies it with PyJWT: signature by the JWK its `kid` names, an algorithm the discovery
     document lists (asymmetric only), `aud` containing --audience, `iss` = the issuer, `exp`
     (and `iat`, `sub` present)                                       (else 401 invalid_token)
  3. when the token has a `status` claim (IETF OAuth Token Status List), checks it: fetches
     the list at `status.status_list.uri` (same origin as the issuer), verifies that
     `statuslist+jwt` with the same JWK set (`sub` = the URI, `exp`), inflates `lst` (zlib)
     and reads the `bits`-wide entry at `idx`; anything but 0 (VALID)  (401 revoked_token).
     A list is cached for its `ttl` claim, at most --status-list-max-age seconds.
  4. requires the caller's SPIFFE ID (`sub`) to be one of --allow-spiffe-id (else 403 forbidden)
  5. requires a `task_id` claim: the tool works only inside a task     (else 403 no_task),
     and a task token must carry a `status` claim, or its end could not be seen
                                                                      (else 401 invalid_token)

and answers 200 with the task the call belongs to. Without step 3, an offline validator would
accept an ended task's token until it expires.

Every request is logged as one JSON line on stdout; the first line is
{"event": "ready", "port": N, ...} once the server listens (use --port 0 for a free port).

Exit status: 0 on SIGINT/SIGTERM, 1 when the server cannot start (the discovery document
cannot be fetched or names another issuer), 3 when PyJWT or cryptography cannot be imported.
"""

import argparse
import base64
import json
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import cryptography  # noqa: F401  (PyJWT needs it for ES256 and the other EC/RSA algorithms)
    import jwt
    from jwt import PyJWKClient
except ImportError as e:
    print(json.dumps({"event": "error", "import_error": str(e)}), flush=True)
    sys.exit(3)

#: Algorithms a relying party may accept from a discovery document: asymmetric only, so a
#: token can never be "signed" with a public key used as an HMAC secret, nor with "none".
ASYMMETRIC = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
#: Largest inflated status list accepted (the draft's lists are bits per token; a list of
#: 2^20 one-bit entries is 128 KiB).
MAX_LIST_BYTES = 16 * 1024 * 1024
#: Status values of the draft (section 7.1); any but VALID refuses the token.
STATUS_NAMES = {0: "VALID", 1: "INVALID", 2: "SUSPENDED"}


#: Request threads log at the same time: one write of a whole line at a time, or two
#: lines can interleave (print writes the text and the newline separately).
_LOG_LOCK = threading.Lock()


def log(event, **fields):
    line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n"
    with _LOG_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


class Refused(Exception):
    """A token is refused: HTTP status, error code and a sentence for the caller."""

    def __init__(self, status, error, detail, **log_fields):
        super().__init__(detail)
        self.status, self.error, self.detail, self.log_fields = status, error, detail, log_fields


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def inflate(data):
    """zlib-inflates `data`, refusing more than MAX_LIST_BYTES of output."""
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_LIST_BYTES)
    if d.unconsumed_tail:
        raise ValueError(f"status list larger than {MAX_LIST_BYTES} bytes inflated")
    return out + d.flush()


def status_at(lst, bits, idx):
    """The `bits`-wide status at index `idx` of an inflated list (draft section 4.1: entry
    `idx` starts at bit `idx * bits`, counting from the least significant bit of byte 0)."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits {bits!r}: must be 1, 2, 4 or 8")
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        raise ValueError(f"idx {idx!r}: must be a non-negative integer")
    pos = idx * bits
    if pos // 8 >= len(lst):
        raise ValueError(f"idx {idx} is beyond the list ({len(lst) * 8 // bits} entries)")
    return (lst[pos // 8] >> (pos % 8)) & ((1 << bits) - 1)


class Validator:
    """Offline validation: discovery document, JWK set, status lists (see the module doc)."""

    def __init__(self, issuer, audience, cafile, max_list_age):
        self.issuer = issuer
        self.audience = audience
        self.context = ssl.create_default_context(cafile=cafile)
        self.max_list_age = max_list_age
        self.discovery = None
        self.algorithms = []
        self.jwks = None
        # uri -> (expires at, monotonic; inflated list; bits; fetched at, monotonic)
        self._lists = {}
        self._lock = threading.Lock()

    def _get(self, url, accept):
        req = urllib.request.Request(url, headers={"Accept": accept})
        with urllib.request.urlopen(req, context=self.context, timeout=10) as resp:
            return resp.read()

    def discover(self):
        """Fetches the discovery document and sets up the JWK set client; raises on error."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = json.loads(self._get(url, "application/json"))
        if doc.get("issuer") != self.issuer:
            raise ValueError(f"{url} names issuer {doc.get('issuer')!r}, not {self.issuer!r}")
        algorithms = [a for a in doc.get("id_token_signing_alg_values_supported", []) if a in ASYMMETRIC]
        if not algorithms:
            raise ValueError(f"{url} lists no asymmetric signing algorithm")
        jwks_uri = doc.get("jwks_uri", "")
        if not jwks_uri.startswith("https://"):
            raise ValueError(f"{url}: jwks_uri {jwks_uri!r} is not https")
        self.discovery, self.algorithms = doc, algorithms
        self.jwks = PyJWKClient(jwks_uri, cache_jwk_set=True, lifespan=60, ssl_context=self.context)

    def _key(self, token):
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError as e:
            raise Refused(401, "invalid_token", f"no published key for this token: {e}") from None
        except jwt.DecodeError as e:
            raise Refused(401, "invalid_token", f"not a JWT: {e}") from None
        if key.algorithm_name not in self.algorithms:
            raise Refused(401, "invalid_token", f"key {key.key_id} is for {key.algorithm_name}")
        return key

    def verify(self, token):
        """(verified claims, status check or None) of a JWT-SVID (steps 2 and 3), or Refused."""
        key = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "sub", "aud"]},
            )
        except jwt.InvalidTokenError as e:
            raise Refused(401, "invalid_token", f"{type(e).__name__}: {e}") from None
        checked = self.check_status(claims) if "status" in claims else None
        return claims, checked

    def check_status(self, claims):
        """Step 3: the token's entry in its status list must be VALID (0); returns what
        was checked."""
        ref = claims["status"].get("status_list") if isinstance(claims["status"], dict) else None
        if not isinstance(ref, dict) or not isinstance(ref.get("uri"), str) or "idx" not in ref:
            raise Refused(401, "invalid_token", f"malformed status claim {claims['status']!r}")
        uri, idx = ref["uri"], ref["idx"]
        if not uri.startswith(self.issuer.rstrip("/") + "/"):
            raise Refused(401, "invalid_token", f"status list {uri} is not served by the issuer")
        try:
            lst, bits, cached, age = self._list(uri)
            status = status_at(lst, bits, idx)
        except Refused:
            raise
        except Exception as e:  # noqa: BLE001  (fail closed: an unknown status is no VALID)
            raise Refused(401, "invalid_token", f"status list {uri}: {type(e).__name__}: {e}") from None
        checked = {"uri": uri, "idx": idx, "status": status, "cached": cached, "list_age_ms": age}
        if status != 0:
            name = STATUS_NAMES.get(status, "unknown")
            raise Refused(
                401,
                "revoked_token",
                f"the token is revoked: its status list {uri} marks index {idx} {name} ({status})",
                status_list=checked,
            )
        return checked

    def _list(self, uri):
        """(inflated list, bits, whether cached, age in ms) of the list at `uri`."""
        now = time.monotonic()
        with self._lock:
            hit = self._lists.get(uri)
            if hit is not None and hit[0] > now:
                return hit[1], hit[2], True, round((now - hit[3]) * 1000)
        token = self._get(uri, "application/statuslist+jwt").decode("ascii").strip()
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "statuslist+jwt":
            raise ValueError(f"typ {header.get('typ')!r} is not statuslist+jwt")
        key = self._key(token)
        body = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm_name],
            options={"require": ["sub", "iat"], "verify_aud": False},
        )
        if body["sub"] != uri:
            raise ValueError(f"sub {body['sub']!r} is not the list's URI")
        if "iss" in body and body["iss"] != self.issuer:
            raise ValueError(f"iss {body['iss']!r} is not {self.issuer!r}")
        sl = body.get("status_list") or {}
        bits, lst = int(sl.get("bits", 0)), inflate(b64url_decode(sl.get("lst", "")))
        # Cache for the list's ttl (draft section 5.1; absent: not at all), never longer
        # than --status-list-max-age, nor past the list token's exp.
        life = min(float(body.get("ttl", 0)), self.max_list_age)
        if "exp" in body:
            life = min(life, float(body["exp"]) - time.time())
        fetched = time.monotonic()
        with self._lock:
            self._lists[uri] = (fetched + max(life, 0.0), lst, bits, fetched)
        return lst, bits, False, 0


class ToolHandler(BaseHTTPRequestHandler):
    server_version = "tessera-example-tool/2"

    # Set on the class by main().
    validator = None
    allowed = frozenset()

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def reply(self, status, body, **log_fields):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="tool", error="invalid_token"')
        self.end_headers()
        self.wfile.write(data)
        log("call", method=self.command, path=self.path, status=status, **log_fields)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, 64 * 1024)) if length else b""
        try:
            request = json.loads(raw) if raw else {}
        except ValueError:
            request = {"raw": raw.decode(errors="replace")}
        self.handle_call(request if isinstance(request, dict) else {"raw": request})

    def do_GET(self):
        self.handle_call({})

    def handle_call(self, request):
        try:
            claims, checked = self.authorize()
        except Refused as r:
            self.reply(r.status, {"error": r.error, "detail": r.detail}, error=r.error, detail=r.detail, **r.log_fields)
            return
        caller, task_id = claims["sub"], claims["task_id"]
        self.reply(
            200,
            {
                "ok": True,
                "caller": caller,
                "task_id": task_id,
                "scope": claims.get("scope", ""),
                "audience": self.validator.audience,
                "result": f"looked up {request.get('query', '')!r} for task {task_id}",
            },
            caller=caller,
            task_id=task_id,
            status_list=checked,
        )

    def authorize(self):
        """Steps 1 to 5 of the module doc: (verified claims, status check), or Refused."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "missing_token", "send Authorization: Bearer <JWT-SVID>")
        claims, checked = self.validator.verify(token)
        caller, task_id = claims["sub"], claims.get("task_id")
        if caller not in self.allowed:
            raise Refused(
                403,
                "forbidden",
                f"{caller} may not call this tool (allowed: {', '.join(sorted(self.allowed))})",
                caller=caller,
                task_id=task_id,
            )
        if not task_id:
            raise Refused(403, "no_task", "the token is not bound to a task", caller=caller)
        if checked is None:
            raise Refused(
                401,
                "invalid_token",
                f"task {task_id}'s token has no status claim: its end could not be seen",
                caller=caller,
                task_id=task_id,
            )
        return claims, checked


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    p.add_argument("--issuer", required=True, help="the JWT-SVIDs' iss, e.g. https://tessera.example.org")
    p.add_argument("--cafile", required=True, help="CA certificates (PEM) that sign the issuer's HTTPS certificate")
    p.add_argument("--audience", required=True, help="the audience callers' tokens must name")
    p.add_argument(
        "--allow-spiffe-id",
        action="append",
        required=True,
        help="SPIFFE ID allowed to call the tool (repeatable)",
    )
    p.add_argument(
        "--status-list-max-age",
        type=float,
        default=300,
        help="cache a status list at most this many seconds, whatever its ttl says (default 300)",
    )
    p.add_argument("--wait", type=float, default=30, help="seconds to wait for the discovery document")
    args = p.parse_args()
    if args.status_list_max_age < 0:
        p.error("--status-list-max-age must not be negative")

    validator = Validator(args.issuer, args.audience, args.cafile, args.status_list_max_age)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            validator.discover()
            break
        except (OSError, ValueError) as e:  # URLError and ssl errors are OSErrors
            if time.monotonic() >= deadline:
                log("error", error=f"OIDC discovery at {args.issuer}: {type(e).__name__}: {e}")
                sys.exit(1)
            time.sleep(0.2)

    ToolHandler.validator = validator
    ToolHandler.allowed = frozenset(args.allow_spiffe_id)
    httpd = ThreadingHTTPServer((args.host, args.port), ToolHandler)
    httpd.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(
        "ready",
        host=args.host,
        port=httpd.server_address[1],
        issuer=args.issuer,
        jwks_uri=validator.discovery["jwks_uri"],
        algorithms=validator.algorithms,
        audience=args.audience,
        allowed=sorted(ToolHandler.allowed),
        status_list_max_age=args.status_list_max_age,
    )
    try:
        httpd.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
