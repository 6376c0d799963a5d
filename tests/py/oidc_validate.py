#!/usr/bin/env python3
"""A relying party that never talks to Tessera: validates JWT-SVIDs offline with PyJWT.

Driven by tests/tests/e2e/relying_party.rs. Given the issuer URL, it does what a standard
OIDC relying party (a tool server, a cloud IAM) does: fetches
`<issuer>/.well-known/openid-configuration` over HTTPS (trusting only --cafile, the web PKI
of the relying-party listener, never the SPIFFE bundle), checks that the document names the
same issuer, fetches the JWK set from its `jwks_uri` with PyJWT's PyJWKClient, and decodes
each token with PyJWT: ES256 only, signature by the key its `kid` names, `exp`, `iat`,
audience and issuer required and checked.

With --check-status it also does what a relying party of the IETF OAuth Token Status List
draft does for a token with a `status` claim: fetches the list at `status.status_list.uri`,
verifies it as a JWT (header `typ` statuslist+jwt, signed by a key of the same JWK set,
`sub` equal to that URI), inflates `status_list.lst` (zlib) and reads the entry at `idx`
(`bits` per entry, least significant bits first); any status but 0 (VALID) refuses the token.

Prints ONE JSON object on stdout: the PyJWT version, the discovery document, and per token
{"ok": true, "claims": {...}} or {"ok": false, "error": "<exception class>: <message>"}.

Exit status: 0 when the JSON was printed (refusals are data, the Rust test judges them),
2 when discovery itself failed, 3 when PyJWT or cryptography cannot be imported (the test
then fails with install instructions).
"""

import argparse
import json
import base64
import ssl
import sys
import urllib.request
import zlib

try:
    import jwt
    from jwt import PyJWKClient
    import cryptography  # noqa: F401  (PyJWT needs it for ES256)
except ImportError as e:  # never skip silently: the Rust test turns this into a failure
    print(json.dumps({"import_error": str(e)}))
    sys.exit(3)


def fetch_json(url, context):
    with urllib.request.urlopen(url, context=context, timeout=10) as resp:
        return json.loads(resp.read().decode("utf-8"))


class TokenStatusInvalid(Exception):
    """The token's entry in its status list is not VALID (0)."""


def fetch_text(url, context):
    req = urllib.request.Request(url, headers={"Accept": "application/statuslist+jwt"})
    with urllib.request.urlopen(req, context=context, timeout=10) as resp:
        return resp.read().decode("ascii")


def check_status(claims, jwks, algorithms, context):
    """Returns the token's status (0 when it has no status claim); raises when not 0."""
    ref = (claims.get("status") or {}).get("status_list")
    if ref is None:
        return 0
    uri, idx = ref["uri"], int(ref["idx"])
    token = fetch_text(uri, context)
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "statuslist+jwt":
        raise TokenStatusInvalid(f"status list typ {header.get('typ')!r}")
    key = jwks.get_signing_key_from_jwt(token)
    body = jwt.decode(
        token, key.key, algorithms=algorithms, options={"require": ["sub", "iat"]}
    )
    if body["sub"] != uri:
        raise TokenStatusInvalid(f"status list sub {body['sub']!r} is not {uri!r}")
    bits = int(body["status_list"]["bits"])
    lst = body["status_list"]["lst"]
    data = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    per_byte = 8 // bits
    status = (data[idx // per_byte] >> ((idx % per_byte) * bits)) & ((1 << bits) - 1)
    if status != 0:
        raise TokenStatusInvalid(f"status {status} at index {idx} of {uri}")
    return status


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--issuer", required=True)
    p.add_argument("--audience", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--check-status", action="store_true")
    p.add_argument("tokens", nargs="*")
    args = p.parse_args()

    context = ssl.create_default_context(cafile=args.cafile)
    try:
        discovery = fetch_json(
            args.issuer.rstrip("/") + "/.well-known/openid-configuration", context
        )
    except Exception as e:  # noqa: BLE001  (reported, the test fails on it)
        print(json.dumps({"discovery_error": f"{type(e).__name__}: {e}"}))
        sys.exit(2)
    if discovery.get("issuer") != args.issuer:
        print(json.dumps({"discovery_error": f"issuer mismatch: {discovery.get('issuer')!r}"}))
        sys.exit(2)
    algorithms = discovery.get("id_token_signing_alg_values_supported") or ["ES256"]
    jwks = PyJWKClient(discovery["jwks_uri"], cache_keys=False, ssl_context=context)

    results = []
    for token in args.tokens:
        try:
            key = jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=algorithms,
                audience=args.audience,
                issuer=args.issuer,
                options={"require": ["exp", "iat", "iss", "sub", "aud"]},
            )
            status = check_status(claims, jwks, algorithms, context) if args.check_status else None
            results.append({"ok": True, "claims": claims, "status": status})
        except Exception as e:  # noqa: BLE001  (every refusal is reported)
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    print(
        json.dumps(
            {"pyjwt_version": jwt.__version__, "discovery": discovery, "results": results}
        )
    )


if __name__ == "__main__":
    main()
