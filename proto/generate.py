"""The one way to (re)generate controlplane/core/rpc/v1 from proto/: `python proto/generate.py`.

The proto path mirrors the Python package, so protoc's imports are right as generated
(`from controlplane.core.rpc.v1 import coordinator_pb2`): nothing is post-processed.
`--check` regenerates into a temporary directory and exits 1 if the committed code differs.
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = Path("controlplane/core/rpc/v1")
GENERATED = ("coordinator_pb2.py", "coordinator_pb2.pyi", "coordinator_pb2_grpc.py")


def generate(out: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_DIR / PACKAGE / "coordinator.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main(argv: list[str]) -> int:
    if "--check" not in argv:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [
            name
            for name in GENERATED
            if not (ROOT / PACKAGE / name).exists()
            or not filecmp.cmp(Path(tmp) / PACKAGE / name, ROOT / PACKAGE / name, shallow=False)
        ]
    if stale:
        print(f"generated gRPC code is stale ({', '.join(stale)}): run python proto/generate.py")
        return 1
    print("generated gRPC code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
