"""The command line's arguments: `build_parser` (every sub-command and flag) and the argparse
types that check numbers before any work, so a bad flag is one line naming it (engine.cli runs
the commands).
"""
from __future__ import annotations

import argparse
import math


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
    p.add_argument("--alice-epochs", type=EPOCHS, default=10)
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
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="arithmetic of every run, recorded in its spec: auto (default) = bf16 "
                   "autocast where it pays (CUDA; CPUs with AMX), fp32 elsewhere")
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
    p.add_argument("--config", metavar="STUDY.toml", help="take options from this TOML file "
                   "(keys are these flags' names, e.g. n-train = 512); flags given here override")
    p.add_argument("--from", dest="from_dir", metavar="DIR", help="re-run or extend the sweep "
                   "stored in DIR/sweep.json (--out defaults to DIR); flags given here override")

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

    p = sub.add_parser("status", help="where a sweep or case study stands, while it runs or "
                       "after it stopped (never takes its lock)")
    p.add_argument("dir", help="a sweep root (--out of engine sweep) or a case-study directory")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")

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
    from engine.studies.claims import command as reproduce
    reproduce.add_parser(sub)
    from engine.analysis.depth import recommend
    recommend.add_parser(sub)
    return parser


ANALYSES = ("cka", "transferability", "bound", "barrier", "criticality", "attribution",
            "select-source", "choose-depth")  # engine.analysis.analyze.COMMANDS


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
        if kind == "choose-depth":
            k.add_argument("--predictor", help="only these depth predictors, comma-separated "
                           "(default: all; see engine.analysis.depth.registry)")


def _add_train_args(p: argparse.ArgumentParser, epochs_flag: str) -> None:
    p.add_argument(epochs_flag, dest="epochs", type=EPOCHS, default=10)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=POSITIVE, help="learning rate (default: sgd 0.01, adam 0.001)")
    p.add_argument("--batch-size", type=_int(1, 1 << 24), default=128)
    p.add_argument("--depth", type=_int(1, 1000), help="blocks before the head (mlp, cnn; default 4)")
    p.add_argument("--width", type=_int(1, 1 << 16),
                   help="mlp units / cnn base channels (default 256 / 32)")
