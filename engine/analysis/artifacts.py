"""What the analyses read from a sweep root: its runs, datasets, Alice and Bob networks, and
cached activations.

Sweeps keep Bob's metrics but not Bob's weights. `bob_model` loads `<out>/bob/<run_id>.safetensors`
when present; otherwise it re-runs that fine-tune from the run's spec with `sweep.run_bob` (the
sweep's own code path and seeds, so on the same device it reproduces the stored test accuracy) and
saves it there. The same works for a spec that was never run (`spec=`), e.g. a second seed.

Activations are cached per model, data and layer as `<out>/analysis/cache/<model-id>-<split>-l<k>.npy`
(`<split>` also names the dataset and sample count, hashed, so another subset is another file);
one forward pass fills every layer's file, written atomically, each with its digest beside it
(`<name>.npy.xxh3`, engine.data.digest). A cached file whose digest is missing or does not match is
recomputed (with a one-line notice), never used. Datasets are verified (engine.data.manifest.
verify_dataset) before they are loaded, and checkpoints on every load.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from engine import paths
from engine.train.alice import load_data
from engine.atomic import atomic_path
from engine.train.checkpoint import load_checkpoint, save_checkpoint
from engine.errors import EngineError
from engine.train.freeze import frozen_prefix, prepare_bob
from engine.data import digest as dig
from engine.data.manifest import verify_dataset
from engine.train.models import LayeredNet, build_model
from engine.spec import BobSpec, n_layers
from engine.store import ResultsStore
from engine.train.device import DeviceData
from engine.train.trainer import CompiledModelCache

POOL_ABOVE = 4096  # conv activations wider than this (C*H*W) are globally average-pooled to C
DEVICE = torch.device("cpu")


# The sweep's runs --------------------------------------------------------------------------------

def sweep_runs(out: Path) -> pd.DataFrame:
    """Every stored Bob run of the sweep root `out`."""
    out = Path(out)
    if not (out / "results").is_dir():
        raise EngineError(f"{out} is not a sweep directory (no results store); pass the --out of "
                          "engine sweep")
    df = ResultsStore(out, read_only=True).table()
    if df.empty:
        raise EngineError(f"{out} holds no finished runs yet")
    return df


def filter_runs(df: pd.DataFrame, *, betas=None, archs=None, seeds=None, modes=None,
                n_bobs=None) -> pd.DataFrame:
    """Rows matching every given filter (None = any); EngineError when none match."""
    keep = np.ones(len(df), dtype=bool)
    for column, values in (("beta", betas), ("arch", archs), ("seed", seeds), ("mode", modes),
                           ("n_bob", n_bobs)):
        if values is not None:
            keep &= df[column].isin(list(values)).to_numpy()
    picked = df[keep]
    if picked.empty:
        raise EngineError("no runs match the filters (--beta/--arch/--seed/--mode/--n-bob); "
                          "see `engine results DIR`")
    return picked.reset_index(drop=True)


def run_spec(row) -> BobSpec:
    return BobSpec(**json.loads(row["spec_json"]))


# Datasets and networks ---------------------------------------------------------------------------

_DATA: dict[Path, tuple[DeviceData, DeviceData, dict]] = {}


def dataset(out: Path, key: str) -> tuple[DeviceData, DeviceData, dict]:
    """(train, test, manifest) of the sweep's dataset `key`, loaded once per process on the CPU."""
    d = paths.dataset_dir(paths.sweep_datasets(Path(out)), key)
    if d not in _DATA:
        manifest = verify_dataset(d)
        _DATA[d] = (*load_data(d, DEVICE), manifest)
    return _DATA[d]


def _model_from(path: Path) -> tuple[LayeredNet, dict, dict]:
    state, spec, metrics = load_checkpoint(path)
    m = spec["model"]
    model = build_model(m["arch"], m["input_shape"], m["n_classes"], depth=m["depth"],
                        width=m["width"], global_pool=m["global_pool"])
    model.load_state_dict(state)
    return model.eval(), spec, metrics


def alice_model(out: Path, alice_id: str) -> tuple[LayeredNet, dict]:
    """Alice's final network and her checkpoint's metrics."""
    path = paths.alice_checkpoint(Path(out), alice_id)
    if not path.is_file():
        raise EngineError(f"Alice checkpoint missing: {path}; re-run the sweep to recreate it")
    model, _, metrics = _model_from(path)
    return model, metrics


def alice_dataset(out: Path, alice_id: str) -> str:
    """The key of the dataset Alice pre-trained on (unshuffled, even for block-shuffled Bobs)."""
    path = paths.alice_checkpoint(Path(out), alice_id)
    if not path.is_file():
        raise EngineError(f"Alice checkpoint missing: {path}; re-run the sweep to recreate it")
    return load_checkpoint(path)[1]["alice"]["dataset"]


def alice_state(out: Path, alice_id: str) -> dict:
    path = paths.alice_checkpoint(Path(out), alice_id)
    if not path.is_file():
        raise EngineError(f"Alice checkpoint missing: {path}; re-run the sweep to recreate it")
    return load_checkpoint(path)[0]


def stored_spec(out: Path, run_id: str) -> BobSpec:
    rows = sweep_runs(out)
    rows = rows[rows["run_id"] == run_id]
    if rows.empty:
        raise EngineError(f"no run {run_id} in the results store of {out}")
    return run_spec(rows.iloc[0])


def bob_initial_state(out: Path, spec: BobSpec, model: LayeredNet) -> dict:
    """The weights Bob's training started from (Alice's layers and/or fresh ones, per spec)."""
    alice = alice_state(out, spec.alice_id) if spec.alice_id else None
    probe = build_model(**{k: v for k, v in model.spec.items()})
    prepare_bob(probe, alice, retrain_from=spec.retrain_from, mode=spec.mode, seed=spec.seed)
    return {k: v.detach().clone() for k, v in probe.state_dict().items()}


def bob_model(out: Path, run_id: str | None = None, *, spec: BobSpec | None = None,
              log: Callable[[str], None] | None = None) -> tuple[LayeredNet, dict]:
    """Bob's trained network for stored run `run_id` (or any `spec`) and its metrics; see the
    module docstring. Trained on the CPU."""
    out = Path(out)
    spec = spec if spec is not None else stored_spec(out, run_id)
    path = paths.bob_checkpoint(out, spec.run_id)
    if path.is_file():
        try:
            model, _, metrics = _model_from(path)
            return model, metrics
        except EngineError as exc:  # re-created below, as when it is absent
            (log or (lambda m: print(m, file=__import__("sys").stderr)))(
                f"notice: {str(exc).split('; delete it')[0]}; re-creating it")
    from engine.sweep.executors import run_bob  # the sweep's code path; imported late (sweep imports a lot)
    if log:
        log(f"re-creating Bob {spec.run_id} ({spec.mode}, l={spec.retrain_from}, seed={spec.seed})")
    train, test, manifest = dataset(out, spec.dataset)
    n_classes = len(manifest["sources"]["right"]["classes"])
    alice = alice_state(out, spec.alice_id) if spec.alice_id else None
    cache = CompiledModelCache(DEVICE, compile=False)
    metrics = run_bob(spec, train, test, n_classes=n_classes, alice_state=alice, cache=cache,
                      device=DEVICE)
    L = n_layers(spec.arch, spec.depth, spec.width, spec.global_pool)
    runner = cache.get(spec.arch, train.input_shape, n_classes,
                       frozen_upto=frozen_prefix(L, spec.retrain_from, spec.mode),
                       depth=spec.depth, width=spec.width, global_pool=spec.global_pool,
                       precision=spec.precision)  # run_bob's runner: the network it trained
    model = runner.model.eval()
    save_checkpoint(path, model.state_dict(), {"bob": spec.to_dict(), "id": spec.run_id,
                                               "model": model.spec, "stats": list(train.stats)},
                    metrics)
    return model, metrics


# Activation cache --------------------------------------------------------------------------------

def first(data: DeviceData, n: int | None) -> DeviceData:
    """The first `n` samples of `data` (all if None), with its normalisation."""
    if n is None or n >= len(data):
        return data
    return DeviceData(data.images[:n], {k: v[:n] for k, v in data.labels.items()}, data.mean,
                      data.std)


def _flat(h: torch.Tensor, pool: bool = False) -> torch.Tensor:
    if h.dim() == 4 and (pool or h[0].numel() > POOL_ABOVE):
        h = h.mean(dim=(2, 3))  # keeps the estimators' d x d matrices small (channels only)
    return h.flatten(1).float()


def features(out: Path, model_id: str, model: LayeredNet, data: DeviceData, split: str,
             layer: int, *, data_key: str = "", n: int | None = None,
             batch_size: int = 512) -> np.ndarray:
    """float32 [n, d] activations of layer `layer` (0 = the normalised input, 1..L the layers'
    outputs, L = logits) on the first `n` samples of `data` (all if None), flattened; conv maps
    wider than POOL_ABOVE, or feeding a pooling head, are global-average-pooled. `data_key` names
    the dataset in the cache."""
    n = len(data) if n is None else min(int(n), len(data))
    tag = hashlib.sha1(f"{data_key}|{n}".encode()).hexdigest()[:8]
    name = lambda k: paths.feature_cache(Path(out), f"{model_id}-{split}.{tag}-l{k}")  # noqa: E731
    path = name(layer)
    cached = load_cached(path)
    if cached is not None:
        return cached
    model.eval()
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.n_layers + 1)]
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x = data.inputs(slice(start, min(start + batch_size, n)))
            for k, h in enumerate([x, *model.activations(x)]):
                # the head's input is pooled when the head pools (bound.penultimate_features)
                pool = k == model.n_layers - 1 and bool(getattr(model.head, "pool", False))
                per_layer[k].append(_flat(h, pool).cpu())
    path.parent.mkdir(parents=True, exist_ok=True)
    for k, chunks in enumerate(per_layer):
        save_cached(name(k), torch.cat(chunks).numpy())
    return load_cached(path)


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".xxh3")


def save_cached(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` (.npy) and then its digest beside it, each atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    digest = dig.file_digest(path)
    with atomic_path(_digest_file(path)) as tmp:
        Path(tmp).write_text(digest + "\n")


def load_cached(path: Path, log: Callable[[str], None] | None = None) -> np.ndarray | None:
    """The cached array at `path` if it matches its recorded digest; otherwise None (the caller
    recomputes it), with a notice when the file exists but cannot be trusted."""
    if not path.is_file():
        return None
    say = log or (lambda m: print(m, file=__import__("sys").stderr))
    try:
        recorded = _digest_file(path).read_text().strip()
        if dig.matches(path, digest=recorded):
            return np.load(path, allow_pickle=False)
        reason = "does not match its digest"
    except FileNotFoundError:
        reason = "has no digest"
    except (OSError, ValueError) as exc:
        reason = f"is unreadable ({exc})"
    say(f"notice: cached activations {path} {reason}; recomputing them")
    return None


def labels(data: DeviceData, label: str, n: int | None = None) -> np.ndarray:
    n = len(data) if n is None else min(int(n), len(data))
    return data.labels[label][:n].cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def finite(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else math.nan
