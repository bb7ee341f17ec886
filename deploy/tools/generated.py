"""What the generators of deploy/tools share: write the file they generate, or with `--check` say whether the
committed one is still what they would write (the tests run every generator with `--check`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(script: str, output: Path, render: Callable[[], str], argv: list[str] | None = None) -> int:
    """The command line of generator `script` (its __file__): `render()` written to `output`, or with --check, exit
    status 1 when the committed file differs from it."""
    parser = argparse.ArgumentParser(description=f"Write {output.name} (see {Path(script).name}).")
    parser.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not output.exists() or output.read_text() != text:
            print(f"{output} is stale: run python deploy/tools/{Path(script).name}", file=sys.stderr)
            return 1
        return 0
    output.write_text(text)
    print(f"wrote {output}")
    return 0
