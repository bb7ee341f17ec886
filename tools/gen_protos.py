"""Generate the gRPC stubs of protos/ditto/v1 into the client package (clients/python/ditto_client/v1).

protoc writes `from ditto.v1 import x_pb2` (the .proto files' own path); the stubs live in `ditto_client.v1`,
so the imports between them are made relative. (protoletariat does this rewrite too, but it pins protobuf < 6.)

    python -m tools.gen_protos            # write the stubs
    python -m tools.gen_protos --check    # exit 1 when the committed stubs differ from what the protos give
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
TARGET = ROOT / "clients" / "python" / "ditto_client" / "v1"
HEADER = "# Generated from protos/ditto/v1 by `make protos` (tools/gen_protos.py). Do not edit.\n"
INIT = '"""Generated gRPC stubs of the ditto.v1 API (protos/ditto/v1). Do not edit: run `make protos`."""\n'


def generate() -> dict[str, str]:
    """{file name: text} of every stub module, from the protos as they are now."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "ditto" / "v1").glob("*.proto"))
        args = ["protoc", f"-I{PROTOS}", f"-I{protoc_include()}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", *sources]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the message above")
        files = {"__init__.py": INIT}
        for path in sorted((Path(out) / "ditto" / "v1").iterdir()):
            text = re.sub(r"^from ditto\.v1 import ", "from . import ", path.read_text(), flags=re.M)
            files[path.name] = HEADER + text
        return files


def protoc_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed stubs, write nothing")
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        current = {p.name: p.read_text() for p in TARGET.glob("*.py*")} if TARGET.is_dir() else {}
        stale = sorted(n for n in files.keys() | current.keys() if files.get(n) != current.get(n))
        if stale:
            print(f"stubs out of date: {', '.join(stale)}; run `make protos` and commit", file=sys.stderr)
            return 1
        return 0
    TARGET.mkdir(parents=True, exist_ok=True)
    for old in TARGET.glob("*.py*"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        (TARGET / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
