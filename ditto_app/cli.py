"""`ditto`: one command line, one subcommand per job.

Each subcommand lives beside the code it drives, in a module with `register(subparsers)` that adds its parser and
sets `handler` (a function taking the parsed args and returning an exit code). Those modules import heavy
libraries (torch, onnxruntime) inside their handlers, so `ditto --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module with register(subparsers)
COMMANDS: dict[str, str] = {
    "render": "ditto_app.render_cli",
    "serve": "ditto_app.serve_cli",
    "up": "ditto_app.up_cli",
    "converse": "ditto_app.converse_cli",
    "features": "ditto_app.features_cli",
    "weights": "ditto_app.weights_cli",
    "prepare": "ditto_app.prepare_cli",
    "train": "ditto_app.train_cli",
    "worker": "ditto_app.worker_cli",
    "demo": "ditto_app.demo_cli",
    "status": "ditto_app.status_cli",
    "loadtest": "ditto_app.loadtest_cli",
    "livekit-worker": "integrations.livekit.cli",
    "webrtc-gateway": "services.webrtc_gateway.cli",
}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The options every model-running command takes. Defaults come from the services' typed settings
    (DITTO_MODEL__WEIGHTS, DITTO_MODEL__PROFILE, DITTO_MODEL__DEVICE)."""
    from ditto.config import load_settings

    model = load_settings().model
    parser.add_argument("--weights", default=model.weights,
                        help="folder with the official Ditto checkpoints, or 'synthetic' for generated weights "
                             "(default: %(default)s)")
    parser.add_argument("--profile", choices=("full", "tiny"), default=model.profile,
                        help="network widths: 'full' = the official architecture, 'tiny' = narrow, for tests "
                             "(default: %(default)s)")
    parser.add_argument("--device", default=model.device,
                        help="auto, cpu, cuda or cuda:N (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditto", description="Realtime talking heads (Ditto) as a service.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # not built yet in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
