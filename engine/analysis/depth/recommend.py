"""`engine choose-depth --data DATASET_DIR --alice ALICE --n-bob N [--predictor NAME]`: the
retrain-from depth a predictor recommends for a new task, with no sweep: its scores per depth,
what it cost, and its measured track record from stored `engine analyze choose-depth` rows
(`--evaluations DIR`, else the sweep root holding the Alice checkpoint, when it has any)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

from engine.errors import EngineError

# The default must answer in well under the time of one fine-tune per depth: of the two benched,
# h-score took 0.94x that time and correlation 1/19 of it (bench/test_choose_depth_bench.py), and
# correlation has the lowest held-out regret where the depth matters (reinit truth; bench/
# RESULTS.md "Choosing the depth"). With finetune, retraining every layer (l = 1) is as good.
DEFAULT = "correlation"


def add_parser(sub) -> None:
    from engine.cli_args import COUNT, EPOCHS, POSITIVE, SEED
    p = sub.add_parser("choose-depth", help="recommend Bob's retrain-from depth for a new task "
                       "without a sweep (scores per depth and the predictor's track record)")
    p.add_argument("--data", required=True, help="Bob's dataset directory (engine build-data)")
    p.add_argument("--alice", required=True, help="Alice: a sweep's alice/<id> directory or its "
                   "model.safetensors")
    p.add_argument("--n-bob", required=True, type=COUNT, help="Bob's training samples")
    p.add_argument("--predictor", default=DEFAULT, help=f"a depth predictor (default {DEFAULT}; "
                   "see engine.analysis.depth.registry)")
    p.add_argument("--arch", help="refuse an Alice of another architecture")
    p.add_argument("--seed", type=SEED, default=0, help="seeds Bob's sample draw and the predictor")
    p.add_argument("--epochs", type=EPOCHS, default=10, help="Bob's fine-tune budget (as the sweep's)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=POSITIVE, help="learning rate (default: sgd 0.01, adam 0.001)")
    p.add_argument("--batch-size", type=COUNT, default=128)
    p.add_argument("--evaluations", help="a sweep root with `engine analyze choose-depth` rows "
                   "(default: the one holding the Alice checkpoint)")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")


def _checkpoint(alice: Path) -> Path:
    path = alice / "model.safetensors" if alice.is_dir() else alice
    if not path.is_file():
        raise EngineError(f"no Alice checkpoint at {path}; pass a sweep's alice/<id> directory or "
                          "its model.safetensors")
    return path


def _source(ckpt: Path, spec: dict, data_dir: Path):
    """Samples of Alice's own task, where her dataset is found beside her sweep or Bob's data."""
    from engine import paths
    from engine.train.alice import load_data
    key = spec.get("alice", {}).get("dataset")
    for root in (paths.sweep_datasets(ckpt.parent.parent.parent), data_dir.parent):
        d = paths.dataset_dir(root, key) if key else None
        if d is not None and paths.manifest_file(d).is_file():
            return load_data(d, "cpu")[0]
    return None


def track_record(root: Path | None, predictor: str, arch: str) -> dict | None:
    """The newest stored summary of `predictor` for `arch` (else pooled) under `root`."""
    from engine.store import read_analysis
    if root is None or not (root / "analysis" / "choose-depth").is_dir():
        return None
    df = read_analysis(root, "choose-depth")
    if df.empty or "level" not in df:
        return None
    s = df[(df["level"] == "summary") & (df["predictor"] == predictor)]
    for a in (arch, "pooled"):
        rows = s[s["arch"] == a]
        if len(rows):
            r = rows.iloc[-1]
            return {"sweep": str(root), "arch": a, "groups": int(r["groups"]),
                    **{k: float(r[k]) for k in ("spearman", "hit_rate", "within_one", "regret",
                                                "cost_fraction")}}
    return None


def recommend(args) -> dict:
    from engine.analysis.artifacts import _model_from
    from engine.analysis.depth import registry
    from engine.analysis.depth.task import Budget, Task, choose, run_predictor
    from engine.data.manifest import verify_dataset
    from engine.spec import _check_training
    from engine.train.alice import load_data
    fn = registry.get([args.predictor])[args.predictor]
    data_dir, ckpt = Path(args.data), _checkpoint(Path(args.alice))
    if not (data_dir / "manifest.json").is_file():
        raise EngineError(f"{data_dir} is not a dataset directory (no manifest.json); build one "
                          "with engine build-data")
    alice, spec, _ = _model_from(ckpt)
    arch = alice.spec["arch"]
    if args.arch and args.arch != arch:
        raise EngineError(f"the Alice checkpoint {ckpt} is a {arch}, not a {args.arch}")
    manifest = verify_dataset(data_dir)
    train, _ = load_data(data_dir, "cpu")
    if tuple(alice.spec["input_shape"]) != tuple(train.input_shape):
        raise EngineError(f"the Alice checkpoint {ckpt} ({arch}) takes inputs of shape "
                          f"{tuple(alice.spec['input_shape'])} (H, W, C), but {data_dir} has "
                          f"{tuple(train.input_shape)}: it belongs to another dataset pair")
    if args.n_bob > len(train):
        raise EngineError(f"--n-bob {args.n_bob} is larger than the training split of "
                          f"{data_dir} ({len(train)} samples)")
    lr = _check_training(args.epochs, args.optimizer, args.lr, args.batch_size)
    task = Task(alice, train.subset(args.n_bob, args.seed),
                len(manifest["sources"]["right"]["classes"]),
                Budget(args.epochs, args.optimizer, lr, args.batch_size), seed=args.seed,
                alice_id=spec.get("id", "alice") or "alice", dataset_key=manifest["key"],
                source=_source(ckpt, spec, data_dir) if args.predictor == "bound" else None)
    task.source = None if task.source is None else task.source.subset(
        min(args.n_bob, len(task.source)), args.seed)
    scores, cost = run_predictor(fn, task)
    depth = choose(scores)
    root = Path(args.evaluations) if args.evaluations else ckpt.parent.parent.parent
    return {"predictor": args.predictor, "arch": arch, "n_layers": task.L, "depth": depth,
            "scores": [None if math.isnan(s) else float(s) for s in scores],
            "wall_s": cost.wall_s, "flops": cost.flops,
            "track_record": track_record(root, args.predictor, arch)}


def format_answer(r: dict) -> str:
    L, l = r["n_layers"], r["depth"]
    lines = [f"recommended retrain-from depth: l = {l} of L = {L} "
             + (f"(keep Alice's layers 1..{l - 1}, retrain {l}..{L})" if l > 1 else
                "(retrain every layer from Alice's weights)") if l else
             "no recommendation: the predictor gave no finite score here",
             f"{r['predictor']} scores per depth (higher = better): "
             + ", ".join(f"l={i}: {'n/a' if s is None else f'{s:.4g}'}"
                         for i, s in enumerate(r["scores"], 1)),
             f"cost: {r['wall_s']:.2f} s, {r['flops'] / 1e9:.3g} GFLOP"]
    t = r["track_record"]
    if t:
        lines.append(f"track record ({t['sweep']}, {t['arch']}, {t['groups']} groups): picks the "
                     f"best depth {100 * t['hit_rate']:.0f}% of the time, within one layer "
                     f"{100 * t['within_one']:.0f}%, median regret {t['regret']:.2f} points, "
                     f"Spearman {t['spearman']:.2f}, at {t['cost_fraction']:.3f} of the sweep's "
                     "wall time")
    else:
        lines.append("track record: none stored (run `engine analyze choose-depth DIR` on a "
                     "sweep, then pass --evaluations DIR)")
    return "\n".join(lines)


def handle(args) -> int:
    r = recommend(args)
    print(json.dumps(r) if args.json else format_answer(r))
    return 0
