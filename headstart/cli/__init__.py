"""The ``headstart`` command line: one module per command, each with ``add_parser`` and ``run``.

Wrong input (a missing path, an unknown model, weights that do not fit: a
:class:`~headstart.core.errors.HeadstartError`) ends with one sentence and exit code 2; ``--debug`` shows the
traceback instead. Anything else (a bug, CUDA out of memory) keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from headstart import __version__
from headstart.core.choices import engine_setting
from headstart.core.errors import HeadstartError

COMMANDS = ["check", "train", "evaluate", "predict", "models", "compare", "demo", "embed", "lr-find", "adapt", "cache",
            "serve", "report", "export", "suggest"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headstart", description="Transfer learning for image classification: "
                                     "a pretrained network, a new head, an honest evaluation.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"headstart {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"headstart.cli.{name.replace('-', '_')}")
        p = module.add_parser(sub)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: idle threads sleep instead of spinning. Measured (benchmarks/omp_wait.py, Lite0
    # 224 px, 2 cores): 1.03x idle, 1.31x beside one busy process (a loader worker, another job); never slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        engine_setting()  # a mistyped HEADSTART_ENGINE is said now, not after the model has loaded
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `headstart ... | head`: the reader has what it wanted; no traceback
        # Python flushes stdout again at exit, into the closed pipe: point it at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except HeadstartError as exc:
        if args.debug:
            raise
        print(f"headstart {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
