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
    shuffle = p.add_mutually_exclusive_group()
    shuffle.add_argument("--block-shuffle", type=int, metavar="B",
                         help="shuffle each composed image's BxB blocks with one fixed permutation "
                         "(seeded by --seed); B must divide the image's height and width")
    shuffle.add_argument("--pixel-shuffle", action="store_const", const=1, dest="block_shuffle",
                         help="the same as --block-shuffle 1")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete copy exists")

    p = sub.add_parser("inspect", help="print a dataset's manifest and draw a sample grid")
    p.add_argument("dataset", help="a dataset directory written by build-data")
    p.add_argument("--grid", help="write a PNG grid of samples captioned with their labels")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--count", type=int, default=24)

    p = sub.add_parser("demo", help="build the demo dataset and show what was built")
    p.add_argument("--data-root")
    p.add_argument("--out", default="out/demo")

    p = sub.add_parser("pretrain", help="train Alice on a built dataset (reused when already done)")
    p.add_argument("--data", required=True, help="a dataset directory written by build-data")
    p.add_argument("--arch", default="cnn", help="mlp, cnn or resnet18")
    _add_train_args(p, epochs_flag="--epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-epochs", default="", help="also save weights after these epochs, e.g. "
                   "0,1,2 (0 = initial weights)")
    p.add_argument("--out", help="sweep root; weights go to OUT/alice/ID "
                   "(default: $ENGINE_SWEEP_OUT or ./out/sweep)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    p = sub.add_parser("sweep", help="run (or resume) a freeze-depth sweep into a results store")
    p.add_argument("--pair", required=True, help="LEFT:RIGHT sources, e.g. mnist:svhn")
    p.add_argument("--betas", required=True, help="comma-separated, each in [0, 1]")
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
    p.add_argument("--d-latent", type=int, default=20)
    p.add_argument("--target-latent", type=int, help="target latent dimension (default --d-latent)")
    p.add_argument("--n-input", type=int, default=200)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--nonlinearity", choices=["tanh", "sign"], default="tanh")
    p.add_argument("--n-source", type=int, default=10000, help="Alice's training samples")
    p.add_argument("--n-test", type=int, default=2000, help="samples per test split")
    p.add_argument("--epochs", type=int, default=20, help="Bob's epochs (see --min-steps)")
    p.add_argument("--min-steps", type=int, default=200, help="Bob's minimum optimiser steps")
    p.add_argument("--alice-epochs", type=int, default=10)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    p.add_argument("--lr", type=float, help="learning rate (default: sgd 0.01, adam 0.001)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--depth", type=int, default=4, help="mlp blocks before the head")
    p.add_argument("--width", type=int, default=64, help="mlp units per block")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", help="sweep root (default: $ENGINE_SWEEP_OUT or ./out/sweep)")

    p = sub.add_parser("report", help="write a sweep's figures and summary")
    p.add_argument("dir", help="a sweep root (--out of engine sweep)")

    p = sub.add_parser("toy", help="Gaussian feature-correlation model: Alice's weights and Bob's "
                       "accuracy vs alpha, analytic and simulated")
    p.add_argument("--k", type=int, default=4, help="features per group (default 4)")
    p.add_argument("--n", type=int, default=20000, help="samples per simulated set (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alphas", help="comma-separated, each in [-1, 1], written --alphas=-1,0,1 "
                   "(default: -1 to 1 in steps of 0.1)")
    p.add_argument("--lam", type=float, default=1.0, help="Alice's ridge strength, > 0 (default 1)")
    p.add_argument("--hidden", type=int, default=0, help="also simulate an MLP Alice of this width "
                   "(default 0: none)")
    p.add_argument("--length", type=float, help="S2 correlation length in features (default k)")
    p.add_argument("--out", required=True, help="directory for toy.csv and the two figures")

    _add_analyze(sub)
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
        k.add_argument("--max-samples", type=int, default=1000,
                       help="samples per forward-pass analysis (default 1000)")
        if kind == "bound":
            k.add_argument("--bound-mode", default="learned-all",
                           choices=["fixed-all", "learned-A", "learned-all"])
            k.add_argument("--steps", type=int, default=200, help="Adam steps for the transforms")
        if kind == "barrier":
            k.add_argument("--points", type=int, default=11, help="points on each line")
        if kind == "criticality":
            k.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="rewind fractions")
            k.add_argument("--sigmas", default="0,0.05,0.1,0.2", help="relative noise levels")
            k.add_argument("--tolerance", type=float, default=0.05,
                           help="allowed training error above the trained network's")
        if kind == "attribution":
            k.add_argument("--method", default="integrated_gradients",
                           choices=["saliency", "grad_x_input", "integrated_gradients"])
        if kind == "select-source":
            k.add_argument("--target", help="target dataset dir (default: the first run's)")
            k.add_argument("--n", type=int, help="target samples (default: smallest n_bob)")
            k.add_argument("--epochs", type=int, default=10, help="scratch network's epochs")


def _add_train_args(p: argparse.ArgumentParser, epochs_flag: str) -> None:
    p.add_argument(epochs_flag, dest="epochs", type=int, default=10)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=float, help="learning rate (default: sgd 0.01, adam 0.001)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--depth", type=int, help="blocks before the head (mlp, cnn; default 4)")
    p.add_argument("--width", type=int, help="mlp units / cnn base channels (default 256 / 32)")


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
    from engine.sweep.driver import parse_ints
    data = Path(args.data)
    spec = AliceSpec(dataset=read_manifest(data)["key"], arch=args.arch, optimizer=args.optimizer,
                     epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                     depth=args.depth, width=args.width)
    save = parse_ints(args.save_epochs, "save-epochs") if args.save_epochs else []
    print(pretrain(data, spec, paths.sweep_out(args.out), save, args.device,
                   log=lambda m: print(m, file=sys.stderr)))
    return 0


def _sweep(args) -> int:
    from engine.sweep import driver as sweep
    from engine.train.models import ARCHS
    sweep.run_sweep(
        args.pair, sweep.parse_betas(args.betas), sweep.parse_layers(args.layers),
        sweep.parse_ints(args.seeds, "seeds"), sweep.parse_names(args.arch, "arch", tuple(ARCHS)),
        sweep.parse_names(args.modes, "modes", ("finetune", "reinit")),
        sweep.parse_baselines(args.baselines), sweep.parse_n_bobs(args.n_bob),
        epochs=args.epochs, alice_epochs=args.alice_epochs, device=args.device, out=args.out,
        n_train=args.n_train, n_test=args.n_test, data_root=args.data_root, dry_run=args.dry_run,
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, depth=args.depth,
        width=args.width, device_budget_gb=args.device_budget_gb,
        block_shuffles=sweep.parse_block_shuffles(args.block_shuffle))
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
    from engine.sweep.driver import parse_ints
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
    print(run_toy(Path(args.out), k=args.k, n=args.n, seed=args.seed, alphas=parse_alphas(args.alphas),
                  lam=args.lam, hidden=args.hidden, length=args.length,
                  log=lambda m: print(m, file=sys.stderr)))
    return 0


def _analyze(args) -> int:
    from engine.analysis.analyze import Options, analyze
    from engine.sweep.driver import parse_floats, parse_ints, parse_names
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
    for path in analyze(args.kind, Path(args.dir), o, log=lambda m: print(m, file=sys.stderr)):
        print(path)
    return 0


COMMANDS = {"analyze": _analyze, "build-data": _build_data, "inspect": _inspect, "demo": _demo, "pretrain": _pretrain,
            "sweep": _sweep, "results": _results, "report": _report, "toy": _toy,
            "manifold-sweep": _manifold_sweep}


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
