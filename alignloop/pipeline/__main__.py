"""``python -m alignloop.pipeline run PIPELINE.yaml`` / ``quickstart``: the same functions the CLI calls."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rich.console import Console

from alignloop.errors import AlignloopError
from alignloop.pipeline.commands import quickstart, run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignloop.pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline YAML")
    run.add_argument("pipeline")
    run.add_argument("--out", default=None)
    run.add_argument("--set", action="append", default=[], dest="overrides")
    run.add_argument("--variant", default=None)
    quick = sub.add_parser("quickstart", help="the bundled quickstart pipeline")
    quick.add_argument("--fast", action="store_true")
    quick.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("alignloop").setLevel(logging.INFO)

    console = Console()
    try:
        if args.command == "run":
            run_command(args.pipeline, args.overrides, args.out, args.variant, console=console)
        else:
            quickstart(args.fast, args.out, console=console)
    except AlignloopError as err:
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
