"""Command line: ``fastgeom <subcommand>`` / ``python -m fastgeom <subcommand>``."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args) -> int:
    from .info import format_info, info
    print(json.dumps(info(), indent=2, default=str) if args.json else format_info())
    return 0


def _cmd_demo(args) -> int:
    from .demo import run
    s = run(out_dir=args.out, epochs=args.epochs, progress=not args.quiet)
    print(json.dumps(s, indent=2))
    print(f"wrote {s['png']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgeom", description="Riemannian geometry of neural network feature maps")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="versions, built and usable backends, build metadata")
    pi.add_argument("--json", action="store_true")
    pi.set_defaults(func=_cmd_info)
    pd = sub.add_parser("demo", help="train the sinusoid task and plot its log volume element (CPU, < 1 min)")
    pd.add_argument("--out", default="demo_out")
    pd.add_argument("--epochs", type=int, default=10000)
    pd.add_argument("--quiet", action="store_true")
    pd.set_defaults(func=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
