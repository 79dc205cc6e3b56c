"""Regenerate the Python modules of every .proto under proto/ (`make proto`).

The sources live in proto/sriov_nsm_wire/...; generating with proto/ as the include root makes
the generated imports absolute (`from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2`), so
they never collide with another project's `api_pb2` in site-packages.
"""

from __future__ import annotations

import pathlib
import sys


def main(argv: list[str] | None = None) -> int:
    """`--out DIR` writes elsewhere (the test that checks the committed code is current)."""
    import grpc_tools
    from grpc_tools import protoc  # a development dependency only

    args_in = sys.argv[1:] if argv is None else argv
    src = pathlib.Path(__file__).resolve().parent.parent / "proto"
    repo = pathlib.Path(args_in[1]) if args_in[:1] == ["--out"] else src.parent
    protos = sorted(str(p.relative_to(src)) for p in src.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{src}",
        # google/protobuf/*.proto (Empty, Timestamp) ship inside grpc_tools
        f"-I{pathlib.Path(grpc_tools.__file__).parent / '_proto'}",
        f"--python_out={repo}",
        f"--pyi_out={repo}",
        f"--grpc_python_out={repo}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print("regen: protoc failed", file=sys.stderr)
        return rc
    for proto in protos:  # every generated folder must be a package
        pkg = repo / pathlib.Path(proto).parent
        while pkg != repo:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent
    print(f"regen: {len(protos)} protos -> {repo / 'sriov_nsm_wire'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
