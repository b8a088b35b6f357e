"""Runners of the studies claims may need besides sweeps (engine.studies.claims.base.Study).

RUNNERS maps a study kind to `run(out: Path, *, log, device: str, **params) -> None`, which writes
the study into `out` and is resumable: run again on the same `out` it does only what is missing.

- `toy`: the Gaussian feature-correlation model (engine.studies.toy; Mohamud & Brink 2025, Figs. 1
  and 2), scenario S1, per seed: Alice's weights and Bob's accuracy in closed form and simulated,
  into `toy-seed<s>.csv` (TOY_COLUMNS; one file per seed, written atomically, so a resume redoes
  only missing seeds).
- `case-study`: `engine case-study cats-dogs` (engine.studies.case_study.run_case_study) into
  `out`, optionally on subsets of the real data (`cifar_images`, `photos`, linked or copied
  under `out/sources/`); its own store resumes.
- `manifold`: `engine manifold-sweep` (engine.studies.manifold_sweep.run_manifold_sweep) into
  `out`; its own store resumes.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Callable, Sequence

from engine.errors import EngineError
from engine.studies.claims.base import LOG, Study

# toy-seed<s>.csv: angles in degrees of (mean weight on Alice's group, on Bob's group) from Alice's
# group axis; accuracies as fractions ("as-is": Bob uses Alice's output, "retrained": he refits it).
TOY_COLUMNS = ("seed", "alpha", "n", "lam", "k", "analytic_angle", "simulated_angle",
               "analytic_own", "analytic_other", "simulated_own", "simulated_other",
               "analytic_as_is", "simulated_as_is", "analytic_retrained", "simulated_retrained")


def toy_file(out: Path, seed: int) -> Path:
    return Path(out) / f"toy-seed{int(seed)}.csv"


def angle(own: float, other: float) -> float:
    """Degrees from Alice's group axis [1, 0] towards Bob's: 0 = [1, 0], +-45 = [1, +-1]."""
    return math.degrees(math.atan2(other, own))


def run_toy_study(out: Path, *, log: LOG, device: str = "cpu", seeds: Sequence[int] = (0,),
                  n: int = 20000, alphas: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0),
                  lam: float = 1.0, k: int = 4) -> None:
    """S1 of the toy model per seed (the simulation is numpy/torch on the CPU; `device` unused)."""
    from engine.atomic import write_bytes
    from engine.studies.toy import alice_weights, bob_accuracy, components, simulate
    for seed in seeds:
        path = toy_file(out, seed)
        if path.is_file():
            continue
        log(f"toy: S1, seed {seed}, n={n}, {len(alphas)} alphas")
        rows = []
        for alpha in alphas:
            sim = simulate("S1", k, float(alpha), n, lam, seed)
            a_own, a_other = components(alice_weights("S1", k, float(alpha), lam))
            a_as_is, a_retrained = bob_accuracy("S1", k, float(alpha), lam)
            rows.append((seed, float(alpha), n, lam, k, angle(a_own, a_other),
                         angle(sim.own, sim.other), a_own, a_other, sim.own, sim.other,
                         a_as_is, sim.as_is, a_retrained, sim.retrained))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(TOY_COLUMNS)
        writer.writerows([[f"{v:.10g}" if isinstance(v, float) else v for v in r] for r in rows])
        write_bytes(path, text.getvalue().encode())


def _cifar_subset(out: Path, data_root, n: int) -> str:
    """n images of the offline CIFAR-10 npz (the first n / 10 of each class), as an `npz:`
    source under `out`."""
    import numpy as np
    from engine import paths
    from engine.atomic import atomic_path
    from engine.studies.case_study import CIFAR10_NPZ
    src = paths.data_root(data_root) / CIFAR10_NPZ
    if not src.is_file():
        raise EngineError(f"the case study's CIFAR-10 subset needs {src}; pass the data root")
    dst = out / "sources" / f"cifar10-first{n}.npz"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        with np.load(src) as z, atomic_path(dst) as tmp:
            labels = z["labels"]  # the file is sorted by class: take the first n / 10 of each
            keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:max(1, n // 10)]
                                           for c in np.unique(labels)]))
            with open(tmp, "wb") as f:
                np.savez(f, **{k: z[k][keep] for k in z.files})
    return f"npz:{dst}"


def _photo_subset(out: Path, data_root, n: int) -> str:
    """Links to the first n cat and n dog training photos (n // 2 of each for validation) of
    cats_and_dogs_filtered, as a `folder:` source under `out`."""
    import shutil
    from engine import paths
    from engine.studies.case_study import CATS_DOGS_DIR
    src = paths.data_root(data_root) / CATS_DOGS_DIR
    dst = out / "sources" / f"cats-dogs-{n}"
    if not dst.is_dir():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for split, count in (("train", n), ("validation", max(1, n // 2))):
            for cls in ("cats", "dogs"):
                files = sorted((src / split / cls).glob("*.jpg"))[:count]
                if len(files) < count:
                    raise EngineError(f"{src / split / cls} has {len(files)} photos, fewer than "
                                      f"the {count} the case study's subset needs")
                (tmp / split / cls).mkdir(parents=True)
                for f in files:
                    (tmp / split / cls / f.name).symlink_to(f.resolve())
        tmp.rename(dst)
    return f"folder:{dst}"


def run_case_study_study(out: Path, *, log: LOG, device: str = "auto",
                         cifar_images: int | None = None, photos: int | None = None,
                         data_root=None, **params) -> None:
    """The case study; with `cifar_images` / `photos`, on subsets of the real data (the first
    images of CIFAR-10's offline split for Alice, the first photos per class for Bob)."""
    from engine.studies.case_study import run_case_study
    if cifar_images:
        params["alice_source"] = _cifar_subset(out, data_root, int(cifar_images))
    if photos:
        params["bob_source"] = _photo_subset(out, data_root, int(photos))
    run_case_study("cats-dogs", out=out, device=device, log=log, data_root=data_root, **params)


def run_manifold_study(out: Path, *, log: LOG, device: str = "auto", overlaps=(1.0, 0.5, 0.0),
                       n_targets=(100, 1000), **params) -> None:
    from engine.studies.manifold_sweep import run_manifold_sweep
    run_manifold_sweep(list(overlaps), list(n_targets), device=device, out=out, log=log, **params)


RUNNERS: dict[str, Callable[..., None]] = {
    "toy": run_toy_study,
    "case-study": run_case_study_study,
    "manifold": run_manifold_study,
}


def run(study: Study, out: Path, *, log: LOG, device: str = "auto") -> Path:
    if study.kind not in RUNNERS:
        raise EngineError(f"unknown study kind {study.kind!r}; known: {', '.join(RUNNERS)}")
    out.mkdir(parents=True, exist_ok=True)
    RUNNERS[study.kind](out, log=log, device=device, **study.kwargs())
    return out
