#!/usr/bin/env python3
"""Workload API interop client built on the unmodified py-spiffe package (`pip install spiffe`).

Driven by tests/tests/e2e/interop_python.rs. The socket comes from SPIFFE_ENDPOINT_SOCKET
(`unix:///...`), exactly as a real workload would get it. Prints ONE JSON object on stdout:

  fetch   fetch_x509_svid(), fetch_x509_context(), fetch_x509_bundles() and an X509Source;
          reports the SVID (chain PEM, key PEM), the bundles and what each call saw.
  denied  the same calls, expected to fail; reports each error's class and message.
  watch   an X509Source; waits (up to --timeout s) for an update with a different serial
          and reports the initial and rotated SVIDs with the time each was received.

Diagnostics only: TESSERA_TEST_GRPC_AUTHORITY=<name> makes grpcio send that `:authority`
instead of its default for `unix:` targets (the percent-encoded socket path, which the
Rust h2 server rejects). Real workloads cannot do this; tests that claim interop never set it.

Exit status: 0 when the JSON was printed (errors are data, the Rust test judges them),
3 when py-spiffe cannot be imported (the test then fails with install instructions).
"""

import argparse
import json
import os
import sys
import threading
import time

try:
    import spiffe
    from spiffe import WorkloadApiClient, X509Source
    from cryptography.hazmat.primitives import serialization
except ImportError as e:  # never skip silently: the Rust test turns this into a failure
    print(json.dumps({"import_error": str(e)}))
    sys.exit(3)


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


def version():
    try:
        from importlib.metadata import version as v

        return v("spiffe")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def svid_json(svid):
    return {
        "spiffe_id": str(svid.spiffe_id),
        "cert_chain_pem": [cert_pem(c) for c in svid.cert_chain],
        "key_pem": key_pem(svid.private_key),
    }


def bundle_set_json(bundle_set):
    return {
        str(b.trust_domain): sorted(cert_pem(c) for c in b.x509_authorities)
        for b in bundle_set.bundles
    }


def error_json(e):
    return {"error_class": type(e).__name__, "error": str(e)}


def cmd_fetch(timeout):
    out = {}
    with WorkloadApiClient(default_timeout=timeout) as client:
        svid = client.fetch_x509_svid()
        out.update(svid_json(svid))
        ctx = client.fetch_x509_context()
        out["context_svid_count"] = len(ctx.x509_svids)
        out["context_spiffe_ids"] = [str(s.spiffe_id) for s in ctx.x509_svids]
        out["context_default_spiffe_id"] = str(ctx.default_svid.spiffe_id)
        out["context_bundles"] = bundle_set_json(ctx.x509_bundle_set)
        out["bundles"] = bundle_set_json(client.fetch_x509_bundles())
    with X509Source(timeout_in_seconds=timeout) as source:
        ctx = source.get_x509_context()
        out["source_spiffe_id"] = str(ctx.default_svid.spiffe_id)
        out["source_key_pem"] = key_pem(ctx.default_svid.private_key)
        out["source_leaf_pem"] = cert_pem(ctx.default_svid.leaf)
    return out


def cmd_denied(timeout):
    out = {}
    with WorkloadApiClient(default_timeout=timeout) as client:
        for name, call in [
            ("svid", client.fetch_x509_svid),
            ("context", client.fetch_x509_context),
            ("bundles", client.fetch_x509_bundles),
        ]:
            try:
                result = call()
                out[name] = {"error_class": None, "unexpected_result": repr(result)}
            except Exception as e:  # the error is the data we report
                out[name] = error_json(e)
    return out


def cmd_watch(timeout):
    updates = []
    lock = threading.Lock()
    changed = threading.Condition(lock)
    source = X509Source(timeout_in_seconds=timeout)
    try:

        def on_update():
            try:
                ctx = source.get_x509_context()
            except Exception as e:
                rec = {"received_at": time.time(), **error_json(e)}
            else:
                rec = {"received_at": time.time(), **svid_json(ctx.default_svid)}
            with changed:
                updates.append(rec)
                changed.notify_all()

        source.subscribe_for_updates(on_update)
        initial = {"received_at": time.time(), **svid_json(source.get_x509_context().default_svid)}
        first_leaf = initial["cert_chain_pem"][0]
        deadline = time.time() + timeout
        rotated = None
        with changed:
            while rotated is None:
                for u in updates:
                    if u.get("cert_chain_pem", [first_leaf])[0] != first_leaf:
                        rotated = u
                        break
                remaining = deadline - time.time()
                if rotated is not None or remaining <= 0:
                    break
                changed.wait(remaining)
        return {"initial": initial, "rotated": rotated, "updates_seen": len(updates)}
    finally:
        source.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["fetch", "denied", "watch"])
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    out = {
        "py_spiffe_version": version(),
        "mode": args.mode,
        "authority_override": override_authority(),
        "error_class": None,
        "error": None,
    }
    try:
        out.update({"fetch": cmd_fetch, "denied": cmd_denied, "watch": cmd_watch}[args.mode](args.timeout))
    except Exception as e:  # report, let the Rust test decide
        out.update(error_json(e))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
