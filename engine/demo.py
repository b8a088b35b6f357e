"""`make demo`: the main job end to end on a CPU in about a minute.

1. Build the headline dataset, mnist:svhn at beta 0.75 (or mnist:fashion when SVHN is neither
   present nor downloadable), show its manifest summary and write a sample grid.
2. A small sweep on the same pair: betas 0, 0.5, 1; every retrain-from depth of the mlp; two seeds;
   finetune and reinit, with the scratch baseline; 6000 training samples. Then the results table
   and the report figures.
"""
from __future__ import annotations

import sys
from pathlib import Path

from engine.data.build import build_data
from engine.errors import EngineError
from engine.data.inspect import inspect
from engine.sweep.report import write_report
from engine.sweep.results import results_table
from engine.spec import Training
from engine.sweep.driver import run_sweep
from engine.sweep.spec import SweepSpec


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def demo(data_root=None, out: Path = Path("out/demo")) -> int:
    pair = "mnist:svhn"
    try:
        dataset = build_data(pair, 0.75, data_root=data_root, out=out / "datasets", log=_log)
    except EngineError as exc:
        _log(f"{pair} cannot be built ({exc}); trying mnist:fashion instead")
        pair = "mnist:fashion"
        dataset = build_data(pair, 0.75, data_root=data_root, out=out / "datasets", log=_log)
    print(inspect(dataset, out / "samples.png"))
    print()

    sweep = out / "sweep"
    spec = SweepSpec(pair, betas=(0.0, 0.5, 1.0), layers="all", seeds=(0, 1), archs=("mlp",),
                     modes=("finetune", "reinit"), baselines=("scratch",), bob=Training(epochs=3),
                     alice=Training(epochs=5), n_train=6000, n_test=2000,
                     data_root=None if data_root is None else str(data_root))
    run_sweep(spec, sweep)
    print(results_table(sweep))
    for path in write_report(sweep):
        print(path)
    return 0
