"""Command line: `engine <command> ...` (also `python -m engine`).

Every user error ends as one line on stderr and exit status 2, with no traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import EngineError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-train", type=int, help="training samples (default: the left train split's size)")
    p.add_argument("--n-test", type=int, help="test samples (default: the left test split's size)")
    p.add_argument("--data-root", help="source datasets, torchvision layout (default: $ENGINE_DATA_ROOT or ./data)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engine", description="Experiments on why pre-trained networks transfer.")
    parser.add_argument("--version", action="version", version=f"engine {__import__('engine').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("build-data", help="build a correlated side-by-side dataset as .beton files")
    p.add_argument("--pair", required=True, help="LEFT:RIGHT sources, e.g. mnist:svhn (left = Alice's task)")
    p.add_argument("--beta", required=True, type=str, help="label correlation in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    _add_data_args(p)
    p.add_argument("--out", help="output root (default: $ENGINE_OUT or ./out/datasets)")
    p.add_argument("--fit", choices=["pad", "resize"], default="pad",
                   help="bring halves to a common height by zero-padding (default) or resizing")
    p.add_argument("--image-size", type=int, default=32, help="side length for folder: sources")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete copy exists")

    p = sub.add_parser("inspect", help="print a dataset's manifest and draw a sample grid")
    p.add_argument("dataset", help="a dataset directory written by build-data")
    p.add_argument("--grid", help="write a PNG grid of samples captioned with their labels")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--count", type=int, default=24)

    p = sub.add_parser("demo", help="build the demo dataset and show what was built")
    p.add_argument("--data-root")
    p.add_argument("--out", default="out/demo")
    return parser


def _build_data(args) -> int:
    from engine.build import build_data
    path = build_data(args.pair, args.beta, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                      data_root=args.data_root, out=args.out, force=args.force, fit=args.fit,
                      image_size=args.image_size, log=lambda m: print(m, file=sys.stderr))
    print(path)
    return 0


def _inspect(args) -> int:
    from engine.inspect import inspect
    print(inspect(Path(args.dataset), Path(args.grid) if args.grid else None, split=args.split,
                  count=args.count))
    return 0


def _demo(args) -> int:
    from engine.demo import demo
    return demo(data_root=args.data_root, out=Path(args.out))


COMMANDS = {"build-data": _build_data, "inspect": _inspect, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EngineError as exc:
        print(f"engine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"engine {args.command}: interrupted; completed work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
