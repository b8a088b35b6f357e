"""The sweep seam: SweepSpec, the pure plan and its work units, and device-independent draws."""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.errors import EngineError
from engine.spec import Training
from engine.sweep import plan as planner
from engine.sweep.spec import SweepSpec

SWEEP = SweepSpec("mnist:fashion", betas=(0.0, 1.0), seeds=(0, 1), archs=("mlp",),
                  bob=Training(epochs=1), alice=Training(epochs=1))
KEYS = {(0.0, None): "d0", (1.0, None): "d1"}


def test_specs_and_planning_import_without_torch():
    code = ("import sys, engine.spec, engine.sweep.spec, engine.sweep.plan, engine.sweep.expand\n"
            "bad = [m for m in ('torch', 'numpy', 'numba') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sweep_spec_round_trips_through_json():
    spec = SWEEP.replace(layers=(1, 5), n_bobs=(100, None), block_shuffles=(None, 4),
                         max_group=8, executor="serial")
    again = SweepSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and hash(again) == hash(spec)


@pytest.mark.parametrize("changes, message", [
    ({"betas": (2.0,)}, "beta"), ({"archs": ("vgg",)}, "architecture"),
    ({"executor": "threads"}, "executor"), ({"max_group": 0}, "max-group"),
    ({"device_budget_gb": -1.0}, "budget"), ({"layers": (9,)}, "out of range"),
    ({"block_shuffles": ()}, "block"), ({"device": "tpu"}, "device"),
])
def test_sweep_spec_rejects_bad_options(changes, message):
    with pytest.raises(EngineError, match=message):
        SWEEP.replace(**changes)


def test_plan_trains_each_computation_once_and_names_the_copies():
    p = planner.plan(SWEEP, keys=KEYS)
    # Per (beta, seed): 5 depths x 2 modes + scratch + 4 random-frozen = 15 runs, 13 to train.
    assert p.total == 2 * 2 * 15 and p.done_before == 0
    assert p.n_train == 2 * 2 * 13 and len(p.copies) == 2 * 2 * 2
    trained = {s.run_id: s for u in p.units for s in u.specs}
    for c in p.copies:
        source = trained[c.source]
        assert source.computation_id == c.spec.computation_id and source.run_id != c.spec.run_id
    assert {(c.spec.mode, c.spec.retrain_from) for c in p.copies} == {("scratch", 1), ("reinit", 5)}
    # Units: one per (dataset, Alice), plus one for the baselines that use no Alice.
    assert {(u.dataset, bool(u.alice_id)) for u in p.units} == {
        (d, a) for d in ("d0", "d1") for a in (True, False)}
    assert all(s.dataset == u.dataset and s.alice_id == u.alice_id for u in p.units for s in u.specs)
    assert {a.id for a in p.alices} == {u.alice_id for u in p.units if u.alice_id}
    assert [r.beta for r in p.datasets] == [0.0, 1.0]


def test_plan_resumes_from_stored_runs():
    full = planner.plan(SWEEP, keys=KEYS)
    first = full.units[0].specs
    done = {s.run_id: "" for s in first}
    p = planner.plan(SWEEP, done, KEYS)
    assert p.done_before == len(first)
    assert p.n_pending == full.n_pending - len(first)
    pending = {s.run_id for u in p.units for s in u.specs} | {c.spec.run_id for c in p.copies}
    assert not pending & done.keys()
    # A copy whose source is stored names the stored run; one whose source was itself a copy
    # names the run that trained.
    for c in p.copies:
        if c.spec.computation_id in {s.computation_id for s in first}:
            assert c.source in done
    scratch = next(c for c in full.copies if c.spec.mode == "scratch")
    done = {scratch.source: "", scratch.spec.run_id: scratch.source}
    again = planner.plan(SWEEP, done, KEYS)
    assert all(c.spec.run_id not in done for c in again.copies)


def test_work_units_are_picklable_values():
    p = planner.plan(SWEEP, keys=KEYS)
    assert pickle.loads(pickle.dumps(p)) == p


def test_block_shuffled_sweep_requests_alices_unshuffled_dataset():
    spec = SWEEP.replace(block_shuffles=(4,))
    assert [(r.beta, r.block_shuffle) for r in planner.dataset_requests(spec)] == [
        (0.0, 4), (1.0, 4), (0.0, None), (1.0, None)]
    keys = {**KEYS, (0.0, 4): "d0b4", (1.0, 4): "d1b4"}
    p = planner.plan(spec, keys=keys)
    assert {u.dataset for u in p.units} == {"d0b4", "d1b4"}
    assert {a.dataset for a in p.alices} == {"d0", "d1"}


# Device-independent draws ------------------------------------------------------------------------

def test_subsets_and_batch_orders_are_drawn_on_the_cpu():
    """The reference: numpy-free CPU draws. CUDA, when present, must give the same indices."""
    from engine.train.device import DeviceData, draw_subset
    from engine.train.trainer import epoch_batches
    images = np.zeros((50, 2, 2, 1), np.uint8)
    labels = {"bob_label": np.arange(50)}
    data = DeviceData.from_arrays(images, labels, "cpu")
    g = torch.Generator().manual_seed(7)
    expected = torch.randperm(50, generator=g)[:20].sort().values
    assert torch.equal(draw_subset(50, 20, 7), expected)
    assert torch.equal(data.subset(20, 7).labels["bob_label"], expected)
    a = epoch_batches(50, 16, torch.Generator().manual_seed(3))
    b = torch.randperm(50, generator=torch.Generator().manual_seed(3))[:48].view(-1, 16)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    if torch.cuda.is_available():
        gpu = DeviceData.from_arrays(images, labels, "cuda")
        assert torch.equal(gpu.subset(20, 7).labels["bob_label"].cpu(), expected)
        c = epoch_batches(50, 16, torch.Generator().manual_seed(3), "cuda")
        assert all(torch.equal(x.cpu(), y) for x, y in zip(c, b))
