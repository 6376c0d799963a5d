#!/usr/bin/env python3
"""JWT-SVID interop client built on the unmodified py-spiffe package (`pip install spiffe`).

Driven by tests/tests/e2e/jwt.rs. The socket comes from SPIFFE_ENDPOINT_SOCKET
(`unix:///...`), exactly as a real workload would get it. Prints ONE JSON object on stdout
with what each call returned; every error is reported as data ({"error_class", "error"}) and
the Rust test judges it:

  svid          WorkloadApiClient.fetch_jwt_svid(audience={--audience...})
  svids         WorkloadApiClient.fetch_jwt_svids(same audience) (one per identity)
  bundles       WorkloadApiClient.fetch_jwt_bundles(): kids per trust domain
  validate      WorkloadApiClient.validate_jwt_svid(token, first audience)
  validate_wrong_audience   the same with --wrong-audience (expected to raise)
  offline       JwtSvid.parse_and_validate(token, bundle of the token's TD, {first audience})
  offline_wrong_audience    the same with {--wrong-audience} (expected to raise)
  offline_tampered          the same with one signature byte flipped (expected to raise)
  source        JwtSource: fetch_svid(audience) and offline verification against
                JwtSource.get_bundle_for_trust_domain(...)

Diagnostics only: TESSERA_TEST_GRPC_AUTHORITY=<name> makes grpcio send that `:authority`
instead of its default for `unix:` targets (the percent-encoded socket path, which the
agent's Rust h2 server rejects). Real workloads cannot do this; the test that claims
interop never sets it (the same switch as tests/py/fetch_x509.py).

Exit status: 0 when the JSON was printed, 3 when py-spiffe cannot be imported (the Rust
test then fails with install instructions), 2 on a usage error.
"""

import argparse
import base64
import json
import os
import sys

try:
    import spiffe
    from spiffe import JwtSource, JwtSvid, WorkloadApiClient
except ImportError as e:  # never skip silently: the Rust test turns this into a failure
    print(json.dumps({"import_error": str(e)}))
    sys.exit(3)


def version():
    try:
        from importlib.metadata import version as v

        return v("spiffe")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


def override_authority():
    """Opt-in diagnostic: force grpcio's :authority (see the module docstring)."""
    authority = os.environ.get("TESSERA_TEST_GRPC_AUTHORITY")
    if not authority:
        return None
    import grpc

    original = grpc.insecure_channel

    def insecure_channel(target, options=None, compression=None):
        opts = list(options or []) + [("grpc.default_authority", authority)]
        return original(target, options=opts, compression=compression)

    grpc.insecure_channel = insecure_channel
    return authority


def err(e):
    return {"error_class": type(e).__name__, "error": str(e)}


def attempt(f):
    """Runs f(); returns (result, None) or (None, error-dict)."""
    try:
        return f(), None
    except Exception as e:  # errors are data here
        return None, err(e)


def describe_svid(s):
    return {
        "spiffe_id": str(s.spiffe_id),
        "audience": sorted(s.audience),
        "expiry": s.expiry,
        "token": s.token,
    }


def flip_signature_byte(token):
    h, c, s = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return ".".join([h, c, base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--audience", action="append", required=True)
    p.add_argument("--wrong-audience", required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    audience = set(args.audience)
    first = args.audience[0]
    out = {
        "py_spiffe_version": version(),
        "spiffe_module": spiffe.__file__,
        "authority_override": override_authority(),
    }

    client = WorkloadApiClient(default_timeout=args.timeout)
    try:
        svid, e = attempt(lambda: client.fetch_jwt_svid(audience=audience))
        out["svid"] = describe_svid(svid) if svid else e
        svids, e = attempt(lambda: client.fetch_jwt_svids(audience=audience))
        out["svids"] = [describe_svid(s) for s in svids] if svids is not None else e

        bundles, e = attempt(client.fetch_jwt_bundles)
        if bundles is None:
            out["bundles"] = e
        else:
            out["bundles"] = {
                str(b.trust_domain): sorted(b.jwt_authorities.keys()) for b in bundles.bundles
            }

        if svid is None:
            print(json.dumps(out))
            return
        token = svid.token
        td = svid.spiffe_id.trust_domain

        v, e = attempt(lambda: client.validate_jwt_svid(token, first))
        out["validate"] = (
            {"spiffe_id": str(v.spiffe_id), "audience": sorted(v.audience)} if v else e
        )
        v, e = attempt(lambda: client.validate_jwt_svid(token, args.wrong_audience))
        out["validate_wrong_audience"] = {"spiffe_id": str(v.spiffe_id)} if v else e

        bundle = bundles.get_bundle_for_trust_domain(td) if bundles is not None else None
        if bundle is None:
            out["offline"] = {"error_class": "NoBundle", "error": f"no JWT bundle for {td}"}
        else:
            v, e = attempt(lambda: JwtSvid.parse_and_validate(token, bundle, {first}))
            out["offline"] = (
                {"spiffe_id": str(v.spiffe_id), "audience": sorted(v.audience)} if v else e
            )
            v, e = attempt(
                lambda: JwtSvid.parse_and_validate(token, bundle, {args.wrong_audience})
            )
            out["offline_wrong_audience"] = {"spiffe_id": str(v.spiffe_id)} if v else e
            tampered = flip_signature_byte(token)
            v, e = attempt(lambda: JwtSvid.parse_and_validate(tampered, bundle, {first}))
            out["offline_tampered"] = {"spiffe_id": str(v.spiffe_id)} if v else e
    finally:
        client.close()

    def with_source():
        source = JwtSource(timeout_in_seconds=args.timeout)
        try:
            s = source.fetch_svid(audience=audience)
            b = source.get_bundle_for_trust_domain(s.spiffe_id.trust_domain)
            if b is None:
                raise RuntimeError("JwtSource has no bundle for the token's trust domain")
            checked = JwtSvid.parse_and_validate(s.token, b, {first})
            return {
                "svid": describe_svid(s),
                "bundle_kids": sorted(b.jwt_authorities.keys()),
                "offline_spiffe_id": str(checked.spiffe_id),
            }
        finally:
            source.close()

    src, e = attempt(with_source)
    out["source"] = src if src else e
    print(json.dumps(out))


if __name__ == "__main__":
    main()
