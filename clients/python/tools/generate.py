#!/usr/bin/env python3
"""Regenerates tessera_tasks/_proto/ from common/proto/tessera.proto.

    python3 clients/python/tools/generate.py           # rewrite the checked-in bindings
    python3 clients/python/tools/generate.py --check   # exit 1 when they are stale

The generator is pinned (GRPC_TOOLS below) and installed into a virtualenv under /tmp
(created on first use, reused afterwards), so the output depends only on the .proto file
and the pin, not on what the machine has installed. Rerunning it is always safe.

The .proto file is compiled as `tessera_tasks/_proto/tessera.proto` so that the generated
gRPC module imports its messages as `from tessera_tasks._proto import tessera_pb2` (no
post-processing of generated code) and the descriptor is registered under a name no other
package uses.

The Rust test `cargo test -p tests --test python_bindings` compares the descriptor
embedded in tessera_pb2.py with the .proto file and fails when this has not been rerun.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Pinned generator. Its output needs grpcio >= this version and protobuf >= 6.31.1 at
# run time (the bounds in pyproject.toml); raise them together.
GRPC_TOOLS = "1.78.0"

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
REPO = PACKAGE.parent.parent
PROTO = REPO / "common" / "proto" / "tessera.proto"
OUT = PACKAGE / "tessera_tasks" / "_proto"
# Where the .proto file sits relative to the include root (= the import path of the output).
PROTO_NAME = "tessera_tasks/_proto/tessera.proto"
GENERATED = ["tessera_pb2.py", "tessera_pb2.pyi", "tessera_pb2_grpc.py"]


def venv_python(venv: Path) -> Path:
    """A virtualenv with grpcio-tools==GRPC_TOOLS; created or repaired when needed."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('grpcio-tools'))"]
    if python.exists():
        found = subprocess.run(probe, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == GRPC_TOOLS:
            return python
    print(f"installing grpcio-tools=={GRPC_TOOLS} into {venv}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"grpcio-tools=={GRPC_TOOLS}"],
        check=True,
    )
    return python


def generate(python: Path, out_dir: Path) -> None:
    """Writes GENERATED into out_dir."""
    with tempfile.TemporaryDirectory(prefix="tessera-proto-") as tmp:
        src = Path(tmp) / "src"
        gen = Path(tmp) / "gen"
        (src / PROTO_NAME).parent.mkdir(parents=True)
        gen.mkdir()
        shutil.copyfile(PROTO, src / PROTO_NAME)
        subprocess.run(
            [str(python), "-m", "grpc_tools.protoc", f"-I{src}",
             f"--python_out={gen}", f"--pyi_out={gen}", f"--grpc_python_out={gen}", PROTO_NAME],
            check=True,
        )
        for name in GENERATED:
            shutil.copyfile(gen / Path(PROTO_NAME).parent / name, out_dir / name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report whether the bindings are stale")
    p.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / f"tessera-grpc-tools-{GRPC_TOOLS}",
                   help="virtualenv for the pinned generator (default: %(default)s)")
    args = p.parse_args()
    python = venv_python(args.venv)
    if not args.check:
        generate(python, OUT)
        print(f"regenerated {', '.join(GENERATED)} in {os.path.relpath(OUT)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="tessera-check-") as tmp:
        generate(python, Path(tmp))
        stale = [n for n in GENERATED if (Path(tmp) / n).read_bytes() != _read(OUT / n)]
    if stale:
        print(f"stale: {', '.join(stale)}; run python3 {os.path.relpath(__file__)}", file=sys.stderr)
        return 1
    print("bindings are up to date")
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


if __name__ == "__main__":
    sys.exit(main())
