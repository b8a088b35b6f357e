"""Source/target pairs of the correlated hidden-manifold model, written as `.beton` datasets.

The model (Goldt et al. 2020, "Modelling the influence of data structure on learning in neural
networks: the hidden manifold model"; its correlated two-task form follows Gerace et al. 2024,
"Probing transfer learning with a model of synthetic correlated datasets"):

    c ~ N(0, I_D)                                   latent vector, D = d_latent
    x = f(F^T c / sqrt(D))                          input, F in R^{D x N} with N(0, 1) entries
    y = argmax_k (W^T c)_k                          label, W in R^{D x K} with N(0, 1) entries

f is tanh (default) or sign (+1 for z >= 0, else -1). For K = 2 the argmax teacher is the binary
teacher y = [w^T c > 0] with w = W[:, 1] - W[:, 0], whose overlaps mix exactly as W's.

Target task: the same construction with D_t = target_latent latent directions and

    F_t = rho_F F[:D_t] + sqrt(1 - rho_F^2) F'[:D_t]      rho_F = feature_overlap
    W_t = rho_W W[:D_t] + sqrt(1 - rho_W^2) W'[:D_t]      rho_W = teacher_overlap

where F, W (source: F_s = F[:D], W_s = W[:D]) and F', W' are independent Gaussian matrices with
max(D, D_t) rows. So the target uses the first D_t latent directions: D_t < D removes the source's
last D - D_t directions, D_t > D adds directions the source does not have (rows of F beyond D,
which the source never uses, mixed with F' as any other row). Entries of F_t and W_t are N(0, 1)
for every rho, and E[F_s,ij F_t,ij] = rho_F on shared rows. At rho_F = rho_W = 1 and D_t = D the
target's matrices are the source's, so `sample(..., "source", n, seed)` and `sample(..., "target",
n, seed)` return the same arrays.

Design: one latent distribution, two input maps. Every sample is one latent c, labelled by both
teachers (alice_label = source teacher, bob_label = target teacher). A task's files hold its own
inputs x = f(F_task^T c / sqrt(D_task)): Alice trains on source-train (x_s, alice_label), Bob on
target-train (x_t, bob_label). A single input distribution labelled by both teachers would leave
the feature map, which is what the lower layers learn, identical across tasks whatever rho_F, so the
depth at which to stop reusing layers could only ever reflect the teacher. Source and target splits
draw independent latents (their own seed streams), as two separately collected data sets would.

A dataset directory holds source-{train,test}.beton and target-{train,test}.beton, each with fields
x float32 [N], alice_label and bob_label (int), and manifest.json, written last.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from engine import __version__, paths
from engine.data import beton
from engine.atomic import staged, writable_dir, write_json
from engine.errors import EngineError
from engine.data.manifest import is_complete, verify_dataset
from engine.spec import spec_hash

MANIFOLD_FORMAT_VERSION = 1  # bump when the bytes a ManifoldSpec produces change
TASKS = ("source", "target")
SPLITS = ("source-train", "source-test", "target-train", "target-test")
NONLINEARITIES = ("tanh", "sign")
LABELS = ("alice_label", "bob_label")
PAGE_SIZE = beton.MIN_PAGE_SIZE  # 2 MiB pages: small files, still a valid FFCV layout


@dataclass(frozen=True)
class ManifoldSpec:
    """Everything that determines the bytes of a manifold dataset (see the module docstring)."""
    d_latent: int = 20               # D, source latent dimension
    n_input: int = 200               # N, input dimension
    n_classes: int = 10              # K (2: the binary teacher)
    nonlinearity: str = "tanh"
    feature_overlap: float = 1.0     # rho_F in [0, 1]
    teacher_overlap: float = 1.0     # rho_W in [0, 1]
    target_latent: int | None = None  # D_t; None means D
    n_source: int = 10_000           # source-train samples
    n_target: int = 3_000            # target-train samples
    n_test: int = 2_000              # samples in each test split
    seed: int = 0
    format_version: int = MANIFOLD_FORMAT_VERSION

    def __post_init__(self):
        if self.target_latent is None:
            object.__setattr__(self, "target_latent", self.d_latent)
        for name in ("d_latent", "n_input", "target_latent", "n_source", "n_target", "n_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EngineError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise EngineError(f"classes must be an integer >= 2, got {self.n_classes!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise EngineError(f"nonlinearity must be one of {', '.join(NONLINEARITIES)}, "
                              f"got {self.nonlinearity!r}")
        for name in ("feature_overlap", "teacher_overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (math.isfinite(value) and 0 <= value <= 1):
                raise EngineError(f"{name.replace('_', '-')} must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise EngineError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def key(self) -> str:
        """Directory name: readable prefix plus the spec hash."""
        return (f"manifold-f{self.feature_overlap:g}-w{self.teacher_overlap:g}-d{self.d_latent}"
                f"-t{self.target_latent}-s{self.seed}-{spec_hash(self)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ManifoldModel(NamedTuple):
    """The two tasks' matrices: features [D_task, N] and teachers [D_task, K]."""
    f_source: np.ndarray
    w_source: np.ndarray
    f_target: np.ndarray
    w_target: np.ndarray
    nonlinearity: str

    def features(self, task: str) -> np.ndarray:
        return self.f_source if task == "source" else self.f_target


class Samples(NamedTuple):
    x: np.ndarray            # float32 [n, N]
    alice_label: np.ndarray  # int64 [n], source teacher
    bob_label: np.ndarray    # int64 [n], target teacher


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=key)))


def _gaussian(seed: int, index: int, rows: int, cols: int) -> np.ndarray:
    # Row i is the i-th block of draws, so the first rows do not depend on how many are drawn:
    # the source's matrices are the same whatever target_latent is.
    return _stream(seed, 0, index).standard_normal((rows, cols))


def _mix(a: np.ndarray, b: np.ndarray, rho: float) -> np.ndarray:
    """rho a + sqrt(1 - rho^2) b, and `a` itself at rho = 1 (so equal tasks share their arrays)."""
    return a if rho == 1.0 else rho * a + math.sqrt(1.0 - rho * rho) * b


def draw_model(spec: ManifoldSpec) -> ManifoldModel:
    """F, W, F', W' from the spec's seed (independent streams), mixed as in the module docstring."""
    d_s, d_t, n, k = spec.d_latent, spec.target_latent, spec.n_input, spec.n_classes
    rows = max(d_s, d_t)
    f, f_new = _gaussian(spec.seed, 0, rows, n), _gaussian(spec.seed, 1, rows, n)
    w, w_new = _gaussian(spec.seed, 2, rows, k), _gaussian(spec.seed, 3, rows, k)
    return ManifoldModel(f_source=f[:d_s], w_source=w[:d_s],
                         f_target=_mix(f[:d_t], f_new[:d_t], spec.feature_overlap),
                         w_target=_mix(w[:d_t], w_new[:d_t], spec.teacher_overlap),
                         nonlinearity=spec.nonlinearity)


def sample(model: ManifoldModel, task: str, n: int, seed: int | np.random.SeedSequence) -> Samples:
    """n samples of `task` ("source" or "target"): latents from `seed`, the task's inputs, and
    both teachers' labels. The latents are the same for both tasks under one seed."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    d_s, d_t = len(model.f_source), len(model.f_target)
    rng = np.random.Generator(np.random.PCG64(seed))
    # Drawn as [D_max, n] and transposed: latent direction j is the j-th block of draws, so the
    # first D coordinates of each sample do not depend on D_t.
    c = rng.standard_normal((max(d_s, d_t), n)).T
    feats = model.features(task)
    d = len(feats)
    z = c[:, :d] @ feats / math.sqrt(d)
    x = np.tanh(z) if model.nonlinearity == "tanh" else np.where(z >= 0, 1.0, -1.0)
    alice = np.argmax(c[:, :d_s] @ model.w_source, axis=1)
    bob = np.argmax(c[:, :d_t] @ model.w_target, axis=1)
    return Samples(x.astype(np.float32), alice.astype(np.int64), bob.astype(np.int64))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Sample correlation sum(a b) / sqrt(sum a^2 sum b^2) over the rows both matrices have
    (a normalised overlap, as the matrices have mean 0)."""
    m = min(len(a), len(b))
    a, b = a[:m].ravel(), b[:m].ravel()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


# Datasets ----------------------------------------------------------------------------------------

def split_samples(spec: ManifoldSpec, model: ManifoldModel, split: str) -> Samples:
    """The samples of one of SPLITS; each split has its own latent stream."""
    task, part = split.split("-")
    n = {"train": spec.n_source if task == "source" else spec.n_target, "test": spec.n_test}[part]
    return sample(model, task, n, np.random.SeedSequence(spec.seed, spawn_key=(1, SPLITS.index(split))))


def write_split(path: Path, samples: Samples) -> dict:
    """`samples` as a `.beton` at `path` (the caller makes it atomic); returns the layout facts."""
    n, dim = samples.x.shape
    fields = {"x": beton.ndarray_field(np.float32, (dim,)),
              **{name: beton.int_field() for name in LABELS}}
    scalars = {"alice_label": samples.alice_label, "bob_label": samples.bob_label}
    return beton.write(path, fields, scalars, n, beton.rows_fill(samples.x), page_size=PAGE_SIZE)


def _label_stats(samples: Samples, n_classes: int) -> dict:
    return {"alice_histogram": np.bincount(samples.alice_label, minlength=n_classes).tolist(),
            "bob_histogram": np.bincount(samples.bob_label, minlength=n_classes).tolist(),
            "label_agreement": float(np.mean(samples.alice_label == samples.bob_label))}


def build_manifold(spec: ManifoldSpec, out=None, *, force: bool = False,
                   log: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse) the dataset of `spec` under `out` (default: paths.datasets_out) and return
    its directory. Splits go to temporary names, are renamed into place, the manifest goes last."""
    log = log or (lambda msg: None)
    target = paths.dataset_dir(paths.datasets_out(out), spec.key)
    if not force and is_complete(target, spec):
        try:
            verify_dataset(target)
            log(f"reusing {target} (same spec, contents verified; --force rebuilds)")
            return target
        except EngineError as exc:
            log(f"notice: {str(exc).split(';')[0]}; rebuilding it")
    writable_dir(target)
    started = time.perf_counter()
    model = draw_model(spec)
    results = {}
    finals = [paths.split_file(target, split) for split in SPLITS]
    with staged(finals, marker=paths.manifest_file(target)) as temps:
        for split, tmp in zip(SPLITS, temps):
            samples = split_samples(spec, model, split)
            facts = write_split(tmp, samples)
            results[split] = {"file": f"{split}.beton", "samples": len(samples.x), **facts,
                              **_label_stats(samples, spec.n_classes)}  # facts: the digest
    seconds = time.perf_counter() - started
    write_json(paths.manifest_file(target), _manifest(spec, model, results, seconds))
    log(f"built {target} in {seconds:.2f} s")
    return target


def _manifest(spec: ManifoldSpec, model: ManifoldModel, results: dict, seconds: float) -> dict:
    return {
        "format_version": spec.format_version,
        "engine_version": __version__,
        "kind": "manifold",
        "key": spec.key,
        "spec": spec.to_dict(),
        "model": {"input": "x = f(F^T c / sqrt(D)), c ~ N(0, I_D)", "f": spec.nonlinearity,
                  "label": "argmax_k (W^T c)_k",
                  "target": "F_t = rho_F F[:D_t] + sqrt(1 - rho_F^2) F'[:D_t]; W_t likewise",
                  "alice_label": "source teacher", "bob_label": "target teacher"},
        "realised_overlaps": {"features": overlap(model.f_source, model.f_target),
                              "teacher": overlap(model.w_source, model.w_target)},
        "fields": {"x": {"type": "NDArrayField", "dtype": "float32", "shape": [spec.n_input]},
                   **{name: {"type": "IntField"} for name in LABELS}},
        "classes": spec.n_classes,
        "splits": results,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": seconds,
    }


def read_split(dataset: Path, split: str) -> Samples:
    """One split of a built dataset, read back from its `.beton`."""
    if split not in SPLITS:
        raise EngineError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    cols = beton.read_beton(paths.split_file(Path(dataset), split), ["x", *LABELS])
    return Samples(cols["x"], cols["alice_label"], cols["bob_label"])
