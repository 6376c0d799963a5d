#!/usr/bin/env python3
"""A Security Event Token receiver's check, with PyJWT: verifies pushed SETs offline.

Driven by tests/tests/e2e/set_push.rs. Given the issuer URL, it fetches
`<issuer>/.well-known/openid-configuration` over HTTPS (trusting only --cafile), checks that
the document names the same issuer, fetches the JWK set from its `jwks_uri`, and decodes
each SET with PyJWT: header `typ` must be `secevent+jwt` (RFC 8417 §2.3), ES256 only,
signature by the key its `kid` names, `iss`, `aud`, `iat` and `jti` required and checked,
and exactly one event in `events`.

Prints ONE JSON object on stdout: per token {"ok": true, "claims": {...}} or
{"ok": false, "error": "<exception class>: <message>"}. Exit status 0 when the JSON was
printed, 2 when discovery failed, 3 when PyJWT or cryptography cannot be imported.
"""

import argparse
import json
import ssl
import sys
import urllib.request

try:
    import jwt
    import cryptography  # noqa: F401  (PyJWT needs it for ES256)
except ImportError as e:  # never skip silently: the Rust test turns this into a failure
    print(json.dumps({"import_error": str(e)}))
    sys.exit(3)


def fetch_json(url, context):
    with urllib.request.urlopen(url, context=context, timeout=10) as resp:
        return json.loads(resp.read().decode("utf-8"))


def verify(token, jwks, issuer, audience):
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "secevent+jwt":
        raise ValueError(f"typ is {header.get('typ')!r}, not secevent+jwt")
    key = jwks[header["kid"]]
    claims = jwt.decode(
        token,
        key=key,
        algorithms=["ES256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "aud", "iat", "jti"]},
    )
    if not isinstance(claims.get("events"), dict) or len(claims["events"]) != 1:
        raise ValueError("events must hold exactly one event")
    return claims


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--issuer", required=True)
    p.add_argument("--audience", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("tokens", nargs="*")
    a = p.parse_args()
    context = ssl.create_default_context(cafile=a.cafile)
    try:
        doc = fetch_json(a.issuer.rstrip("/") + "/.well-known/openid-configuration", context)
        if doc.get("issuer") != a.issuer:
            raise ValueError(f"discovery names issuer {doc.get('issuer')!r}")
        jwks = jwt.PyJWKSet.from_dict(fetch_json(doc["jwks_uri"], context))
        keys = {k.key_id: k for k in jwks.keys}
    except Exception as e:  # noqa: BLE001  (reported, exit 2)
        print(json.dumps({"discovery_error": f"{type(e).__name__}: {e}"}))
        sys.exit(2)
    results = []
    for t in a.tokens:
        try:
            results.append({"ok": True, "claims": verify(t, keys, a.issuer, a.audience)})
        except Exception as e:  # noqa: BLE001  (a refusal is data)
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    print(json.dumps({"pyjwt": jwt.__version__, "results": results}))


if __name__ == "__main__":
    main()
