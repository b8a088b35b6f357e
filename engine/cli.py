"""Command line: `engine <command> ...` (also `python -m engine`).

Every user error ends as one line on stderr and exit status 2, with no traceback: bad flags (checked
by argparse before any work, see the `_int`/`_float` types), EngineErrors, and OSErrors from the
environment (a full disk, a read-only or wrong-type path). A closed stdout ends the command quietly.
Anything else is a bug: one line too (exit 1), with the traceback when ENGINE_TRACEBACK=1.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from engine.errors import EngineError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _int(lo: int, hi: int | None = None, what: str | None = None):
    """argparse type: an integer in [lo, hi]."""
    what = what or {0: "a non-negative integer", 1: "a positive integer"}.get(lo, "an integer")

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"{what} >= {lo}" if hi is None else f"{what} in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value
    parse.__name__ = "integer"
    return parse


def _float(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False):
    """argparse type: a finite number in [lo, hi] ((lo, hi] with open_lo)."""
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        bad = not math.isfinite(value) or (lo is not None and (value <= lo if open_lo else value < lo)) \
            or (hi is not None and value > hi)
        if bad:
            low = "" if lo is None else (f"> {lo:g}" if open_lo else f">= {lo:g}")
            high = "" if hi is None else f"<= {hi:g}"
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a finite number" + (f" {low}" if low else "")
                + (" and" if low and high else "") + (f" {high}" if high else ""))
        return value
    parse.__name__ = "number"
    return parse


COUNT = _int(1)                  # sample counts, sizes, steps
SEED = _int(0, 2**32 - 1)
EPOCHS = _int(1, 100_000)
POSITIVE = _float(0, open_lo=True)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-train", type=COUNT, help="training samples (default: the left train split's size)")
    p.add_argument("--n-test", type=COUNT, help="test samples (default: the left test split's size)")
    p.add_argument("--data-root", help="source datasets, torchvision layout (default: $ENGINE_DATA_ROOT or ./data)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engine", description="Experiments on why pre-trained networks transfer.")
    parser.add_argument("--version", action="version", version=f"engine {__import__('engine').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("build-data", help="build a correlated side-by-side dataset as .beton files")
    p.add_argument("--pair", required=True, help="LEFT:RIGHT sources, e.g. mnist:svhn (left = Alice's task)")
    p.add_argument("--beta", required=True, type=str, help="label correlation in [0, 1]")
    p.add_argument("--seed", type=SEED, default=0)
    _add_data_args(p)
    p.add_argument("--out", help="output root (default: $ENGINE_OUT or ./out/datasets)")
    p.add_argument("--fit", choices=["pad", "resize"], default="pad",
                   help="bring halves to a common height by zero-padding (default) or resizing")
    p.add_argument("--image-size", type=_int(1, 4096), default=32,
                   help="side length for folder: sources")
    shuffle = p.add_mutually_exclusive_group()
    shuffle.add_argument("--block-shuffle", type=COUNT, metavar="B",
                         help="shuffle each composed image's BxB blocks with one fixed permutation "
                         "(seeded by --seed); B must divide the image's height and width")
    shuffle.add_argument("--pixel-shuffle", action="store_const", const=1, dest="block_shuffle",
                         help="the same as --block-shuffle 1")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete copy exists")

    p = sub.add_parser("inspect", help="print a dataset's manifest and draw a sample grid")
    p.add_argument("dataset", help="a dataset directory written by build-data")
    p.add_argument("--grid", help="write a PNG grid of samples captioned with their labels")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--count", type=_int(1, 10_000), default=24)

    p = sub.add_parser("demo", help="build the demo dataset and show what was built")
    p.add_argument("--data-root")
    p.add_argument("--out", default="out/demo")

    p = sub.add_parser("pretrain", help="train Alice on a built dataset (reused when already done)")
    p.add_argument("--data", required=True, help="a dataset directory written by build-data")
    p.add_argument("--arch", default="cnn", help="mlp, cnn or resnet18")
    _add_train_args(p, epochs_flag="--epochs")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--save-epochs", default="", help="also save weights after these epochs, e.g. "
                   "0,1,2 (0 = initial weights)")
    p.add_argument("--out", help="sweep root; weights go to OUT/alice/ID "
                   "(default: $ENGINE_SWEEP_OUT or ./out/sweep)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    p = sub.add_parser("sweep", help="run (or resume) a freeze-depth sweep into a results store")
    p.add_argument("--pair", help="LEFT:RIGHT sources, e.g. mnist:svhn (default: the datasets "
                   "`engine build-data` has built)")
    p.add_argument("--betas", help="comma-separated, each in [0, 1] (default: every beta built)")
    p.add_argument("--layers", default="all", help="retrain-from layers l, or 'all' (1..L)")
    p.add_argument("--seeds", default="0", help="comma-separated non-negative integers")
    p.add_argument("--arch", default="cnn", help="comma-separated: mlp, cnn, resnet18")
    p.add_argument("--modes", default="finetune,reinit", help="comma-separated: finetune, reinit")
    p.add_argument("--baselines", default="scratch,random-frozen",
                   help="comma-separated: scratch, random-frozen; or none")
    p.add_argument("--n-bob", default="all", help="Bob's training samples: comma-separated "
                   "positive integers or 'all'")
    _add_train_args(p, epochs_flag="--epochs")
    p.add_argument("--alice-epochs", type=int, default=10)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--device-budget-gb", type=float, help="datasets with more image bytes are "
                   "streamed from disk (default: half the device's free memory)")
    p.add_argument("--out", help="sweep root (default: $ENGINE_SWEEP_OUT or ./out/sweep)")
    _add_data_args(p)
    p.add_argument("--block-shuffle", default="none", help="Bob's datasets: comma-separated block "
                   "sizes B (1 = pixel shuffle) and/or 'none', one dataset per beta and entry, "
                   "e.g. 1,2,4,7,14,28,none; Alice pre-trains on the unshuffled one")
    p.add_argument("--executor", choices=["serial", "batched", "ray"], default="batched",
                   help="batched (default): runs of one group shape train together as one stacked "
                   "model; serial: one run at a time; ray: Alices and work units as Ray tasks, on "
                   "this machine or a cluster (pip install 'engine-transfer[ray]')")
    p.add_argument("--max-group", type=int, help="at most this many runs per batched group "
                   "(default: as many as the memory budget allows)")
    p.add_argument("--ray-address", metavar="auto|HOST:PORT", help="--executor ray: join this "
                   "running Ray cluster (default: start a local Ray instance, one worker per core)")
    p.add_argument("--cpus-per-unit", type=float, default=1.0, help="--executor ray: CPUs each "
                   "task declares (default 1)")
    p.add_argument("--gpus-per-unit", type=float, default=0.0, help="--executor ray: GPUs each "
                   "task declares; fractions such as 0.25 pack several tasks onto one GPU "
                   "(default 0: tasks run on the CPU)")
    p.add_argument("--max-retries", type=int, default=2, help="--executor ray: retries of a task "
                   "whose worker process or node died (default 2)")
    p.add_argument("--no-wait", action="store_true", help="refuse at once, instead of waiting, "
                   "when another process holds --out")
    p.add_argument("--dry-run", action="store_true", help="print the number of runs and stop")

    p = sub.add_parser("results", help="print a sweep's results table")
    p.add_argument("dir", help="a sweep root (--out of engine sweep)")
    p.add_argument("--csv", help="also write every run as CSV to this file")

    p = sub.add_parser("manifold-sweep", help="best transfer depth in the correlated "
                       "hidden-manifold model: mlp fine-tunes over depth x n_target x overlap")
    p.add_argument("--overlaps", default="1,0.9,0.5,0", help="source-target similarities in [0, 1]")
    p.add_argument("--vary", choices=["both", "features", "teacher"], default="both",
                   help="which overlap the similarity sets (the other stays 1)")
    p.add_argument("--n-target", default="100,300,1000,3000", help="Bob's training sample sizes")
    p.add_argument("--seeds", default="0", help="comma-separated non-negative integers")
    p.add_argument("--d-latent", type=_int(1, 100_000), default=20)
    p.add_argument("--target-latent", type=_int(1, 100_000),
                   help="target latent dimension (default --d-latent)")
    p.add_argument("--n-input", type=_int(1, 1_000_000), default=200)
    p.add_argument("--classes", type=_int(2, 100_000), default=10)
    p.add_argument("--nonlinearity", choices=["tanh", "sign"], default="tanh")
    p.add_argument("--n-source", type=COUNT, default=10000, help="Alice's training samples")
    p.add_argument("--n-test", type=COUNT, default=2000, help="samples per test split")
    p.add_argument("--epochs", type=EPOCHS, default=20, help="Bob's epochs (see --min-steps)")
    p.add_argument("--min-steps", type=_int(0, 10**9), default=200,
                   help="Bob's minimum optimiser steps")
    p.add_argument("--alice-epochs", type=EPOCHS, default=10)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    p.add_argument("--lr", type=POSITIVE, help="learning rate (default: sgd 0.01, adam 0.001)")
    p.add_argument("--batch-size", type=COUNT, default=128)
    p.add_argument("--depth", type=_int(1, 1000), default=4, help="mlp blocks before the head")
    p.add_argument("--width", type=_int(1, 1_000_000), default=64, help="mlp units per block")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", help="sweep root (default: $ENGINE_SWEEP_OUT or ./out/sweep)")

    p = sub.add_parser("report", help="write a sweep's figures and summary")
    p.add_argument("dir", help="a sweep root (--out of engine sweep)")

    p = sub.add_parser("toy", help="Gaussian feature-correlation model: Alice's weights and Bob's "
                       "accuracy vs alpha, analytic and simulated")
    p.add_argument("--k", type=_int(1, 4096), default=4, help="features per group (default 4)")
    p.add_argument("--n", type=_int(2, 10**8), default=20000,
                   help="samples per simulated set (default 20000)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--alphas", help="comma-separated, each in [-1, 1], written --alphas=-1,0,1 "
                   "(default: -1 to 1 in steps of 0.1)")
    p.add_argument("--lam", type=POSITIVE, default=1.0, help="Alice's ridge strength, > 0 (default 1)")
    p.add_argument("--hidden", type=_int(0, 65536), default=0,
                   help="also simulate an MLP Alice of this width (default 0: none)")
    p.add_argument("--length", type=POSITIVE, help="S2 correlation length in features (default k)")
    p.add_argument("--out", required=True, help="directory for toy.csv and the two figures")

    _add_analyze(sub)
    from engine.studies import case_study
    case_study.add_parser(sub)
    return parser


ANALYSES = ("cka", "transferability", "bound", "barrier", "criticality", "attribution",
            "select-source")  # engine.analysis.analyze.COMMANDS


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="analyses of a sweep's networks (CKA, transferability "
                       "estimators, bound, barriers, criticality, attribution, source selection)")
    kinds = p.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    for kind in ANALYSES:
        k = kinds.add_parser(kind, help=f"{kind} analysis; rows into the store, PNG under "
                             "DIR/analysis/")
        k.add_argument("dir", help="a sweep root (--out of engine sweep)")
        k.add_argument("--beta", help="only these betas, comma-separated")
        k.add_argument("--arch", help="only these architectures, comma-separated")
        k.add_argument("--seed", help="only these seeds, comma-separated")
        k.add_argument("--n-bob", help="only these n_bob values, comma-separated")
        k.add_argument("--mode", help="only these run modes (default: finetune; barrier and "
                       "criticality: finetune,scratch)")
        k.add_argument("--max-samples", type=_int(1, 10**7), default=1000,
                       help="samples per forward-pass analysis (default 1000)")
        if kind == "bound":
            k.add_argument("--bound-mode", default="learned-all",
                           choices=["fixed-all", "learned-A", "learned-all"])
            k.add_argument("--steps", type=_int(1, 10**6), default=200,
                           help="Adam steps for the transforms")
        if kind == "barrier":
            k.add_argument("--points", type=_int(2, 10_000), default=11, help="points on each line")
        if kind == "criticality":
            k.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="rewind fractions")
            k.add_argument("--sigmas", default="0,0.05,0.1,0.2", help="relative noise levels")
            k.add_argument("--tolerance", type=_float(0, 1), default=0.05,
                           help="allowed training error above the trained network's")
        if kind == "attribution":
            k.add_argument("--method", default="integrated_gradients",
                           choices=["saliency", "grad_x_input", "integrated_gradients"])
        if kind == "select-source":
            k.add_argument("--target", help="target dataset dir (default: the first run's)")
            k.add_argument("--n", type=COUNT, help="target samples (default: smallest n_bob)")
            k.add_argument("--epochs", type=EPOCHS, default=10, help="scratch network's epochs")


def _add_train_args(p: argparse.ArgumentParser, epochs_flag: str) -> None:
    p.add_argument(epochs_flag, dest="epochs", type=EPOCHS, default=10)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=POSITIVE, help="learning rate (default: sgd 0.01, adam 0.001)")
    p.add_argument("--batch-size", type=_int(1, 1 << 24), default=128)
    p.add_argument("--depth", type=_int(1, 1000), help="blocks before the head (mlp, cnn; default 4)")
    p.add_argument("--width", type=_int(1, 1 << 16),
                   help="mlp units / cnn base channels (default 256 / 32)")


def _build_data(args) -> int:
    from engine.data.build import build_data
    path = build_data(args.pair, args.beta, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                      data_root=args.data_root, out=args.out, force=args.force, fit=args.fit,
                      image_size=args.image_size, block_shuffle=args.block_shuffle,
                      log=lambda m: print(m, file=sys.stderr))
    print(path)
    return 0


def _inspect(args) -> int:
    from engine.data.inspect import inspect
    print(inspect(Path(args.dataset), Path(args.grid) if args.grid else None, split=args.split,
                  count=args.count))
    return 0


def _demo(args) -> int:
    from engine.demo import demo
    return demo(data_root=args.data_root, out=Path(args.out))


def _pretrain(args) -> int:
    from engine import paths
    from engine.train.alice import pretrain
    from engine.data.manifest import read_manifest
    from engine.spec import AliceSpec
    from engine.sweep.parse import parse_ints
    from engine.data.manifest import verify_dataset
    from engine.locks import path_lock
    data = Path(args.data)
    spec = AliceSpec(dataset=read_manifest(data)["key"], arch=args.arch, optimizer=args.optimizer,
                     epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                     depth=args.depth, width=args.width)
    save = parse_ints(args.save_epochs, "save-epochs") if args.save_epochs else []
    from engine.train.alice import _check_save_epochs
    from engine.train.models import ARCHS
    if args.arch not in ARCHS:
        raise EngineError(f"--arch: unknown architecture {args.arch!r}; choose from: "
                          f"{', '.join(ARCHS)}")
    save = _check_save_epochs(save, args.epochs)
    verify_dataset(data)  # digests and label ranges, before anything reads it for training
    out = paths.sweep_out(args.out)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    alice_dir = paths.alice_dir(out, spec.id)
    _mkdir(alice_dir.parent)
    with path_lock(alice_dir, log=log):  # one trainer per Alice; a second waits, then reuses
        print(pretrain(data, spec, out, save, args.device, log=log))
    return 0


def _check_out(path) -> None:
    """EngineError (before any work) when `path`, or a directory above it, is not a directory."""
    if path is None:
        return
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise EngineError(f"{parent} is a file where a directory is needed; pass another --out")


def _mkdir(path: Path) -> None:
    _check_out(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from engine.atomic import os_error
        raise os_error(exc, "create", path) from None


def _sweep(args) -> int:
    from engine.sweep.driver import run_sweep
    from engine.sweep.parse import sweep_spec
    run_sweep(sweep_spec(args), args.out, dry_run=args.dry_run, wait=not args.no_wait)
    return 0


def _results(args) -> int:
    from engine.sweep.results import export_csv, results_table
    print(results_table(Path(args.dir)))
    if args.csv:
        print(export_csv(Path(args.dir), Path(args.csv)), file=sys.stderr)
    return 0


def _manifold_sweep(args) -> int:
    from engine.studies.manifold_figures import format_best
    from engine.studies.manifold_sweep import parse_overlaps, run_manifold_sweep
    from engine.sweep.parse import parse_ints
    _check_out(args.out)
    result = run_manifold_sweep(
        parse_overlaps(args.overlaps), parse_ints(args.n_target, "n-target", minimum=1),
        parse_ints(args.seeds, "seeds"), vary=args.vary, d_latent=args.d_latent,
        n_input=args.n_input, target_latent=args.target_latent, n_classes=args.classes,
        nonlinearity=args.nonlinearity, n_source=args.n_source, n_test=args.n_test,
        epochs=args.epochs, min_steps=args.min_steps, alice_epochs=args.alice_epochs,
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, depth=args.depth,
        width=args.width, device=args.device, out=args.out)
    print(format_best(result["best"]))
    for path in result["figures"]:
        print(path)
    return 0


def _report(args) -> int:
    from engine.sweep.report import write_report
    for path in write_report(Path(args.dir)):
        print(path)
    return 0


def _toy(args) -> int:
    from engine.studies.toy import parse_alphas, run_toy
    _check_out(args.out)
    print(run_toy(Path(args.out), k=args.k, n=args.n, seed=args.seed, alphas=parse_alphas(args.alphas),
                  lam=args.lam, hidden=args.hidden, length=args.length,
                  log=lambda m: print(m, file=sys.stderr)))
    return 0


def _analyze(args) -> int:
    from engine.analysis.analyze import Options, analyze
    from engine.sweep.parse import parse_floats, parse_ints, parse_names
    from engine.spec import BASELINES, TRANSFER_MODES
    o = Options(max_samples=args.max_samples)
    if args.beta:
        o.betas = parse_floats(args.beta, "beta")
    if args.arch:
        o.archs = [a.strip() for a in args.arch.split(",")]
    if args.seed:
        o.seeds = parse_ints(args.seed, "seed")
    if args.n_bob:
        o.n_bobs = parse_ints(args.n_bob, "n-bob", minimum=1)
    if args.mode:
        o.modes = parse_names(args.mode, "mode", TRANSFER_MODES + BASELINES)
    for name in ("bound_mode", "steps", "points", "tolerance", "method", "target", "n", "epochs"):
        if hasattr(args, name):
            setattr(o, name, getattr(args, name))
    if hasattr(args, "alphas"):
        o.alphas = tuple(parse_floats(args.alphas, "alphas"))
        o.sigmas = tuple(parse_floats(args.sigmas, "sigmas"))
    if o.max_samples < 1:
        raise EngineError("--max-samples must be at least 1")
    if hasattr(args, "alphas"):
        if not all(math.isfinite(a) and 0 <= a <= 1 for a in o.alphas):
            raise EngineError("--alphas must be numbers in [0, 1]")
        if not all(math.isfinite(x) and x >= 0 for x in o.sigmas):
            raise EngineError("--sigmas must be non-negative numbers")
    if o.betas is not None and not all(math.isfinite(b) and 0 <= b <= 1 for b in o.betas):
        raise EngineError("--beta must be numbers in [0, 1]")
    for path in analyze(args.kind, Path(args.dir), o, log=lambda m: print(m, file=sys.stderr)):
        print(path)
    return 0


def _case_study(args) -> int:
    from engine.studies.case_study import handle
    return handle(args)


COMMANDS = {"analyze": _analyze, "case-study": _case_study, "build-data": _build_data, "inspect": _inspect, "demo": _demo, "pretrain": _pretrain,
            "sweep": _sweep, "results": _results, "report": _report, "toy": _toy,
            "manifold-sweep": _manifold_sweep}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_message(exc: OSError) -> str:
    from engine.atomic import os_error
    where = exc.filename if exc.filename is not None else "a file"
    return str(os_error(exc, "use", where))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad flag (one line, status 2), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else 2
    name = args.command + (f" {args.kind}" if getattr(args, "kind", None) else "")
    try:
        return COMMANDS[args.command](args)
    except EngineError as exc:
        print(f"engine {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"engine {name}: interrupted; completed work is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `engine results DIR | head`): nothing more to say to it.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 141
    except OSError as exc:  # the environment: a full disk, a read-only or wrong-type path, ...
        print(f"engine {name}: error: {_one_line(_os_message(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("ENGINE_TRACEBACK"):
            raise
        print(f"engine {name}: internal error: {type(exc).__name__}: {_one_line(exc)[:300]} "
              "(set ENGINE_TRACEBACK=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
