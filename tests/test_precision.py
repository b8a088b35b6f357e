"""`--precision auto|fp32|bf16`: what a run's spec records, what it computes in, and that stores
written before the option keep their run IDs."""
from __future__ import annotations

import pytest
import torch

import engine.train.device as device_mod
from engine.cli import main
from engine.errors import EngineError
from engine.spec import AliceSpec, BobSpec
from engine.store import ResultsStore
from engine.train.device import _autocast, precision_used, spec_precision
from test_sweep import sweep_argv, tiny_pair  # noqa: F401  (fixture)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_default_precision_keeps_run_ids():
    run = dict(alice_id="a", dataset="d", arch="mlp", retrain_from=2, mode="finetune")
    assert "precision" not in BobSpec(**run).to_dict()
    assert BobSpec(**run).run_id == BobSpec(**run, precision=None).run_id
    assert len({BobSpec(**run, precision=p).run_id for p in (None, "fp32", "bf16")}) == 3
    assert AliceSpec("d", "mlp").id != AliceSpec("d", "mlp", precision="bf16").id
    with pytest.raises(EngineError, match="unknown precision 'fp16'"):
        BobSpec(**run, precision="fp16")


@pytest.mark.parametrize("pays", [False, True])
def test_spec_precision_per_device(monkeypatch, pays):
    monkeypatch.setattr(device_mod, "bf16_pays", lambda d: d.type == "cuda" or pays)
    assert spec_precision("auto", CPU) == ("bf16" if pays else None)
    assert spec_precision("fp32", CPU) is None and spec_precision("bf16", CPU) == "bf16"
    assert spec_precision("auto", CUDA) is None and spec_precision("bf16", CUDA) is None
    assert spec_precision("fp32", CUDA) == "fp32"
    assert precision_used(None, CPU) == "fp32" and precision_used(None, CUDA) == "bf16"
    with pytest.raises(EngineError, match="unknown precision"):
        spec_precision("half", CPU)


def test_bf16_autocast_on_the_cpu():
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    with _autocast(CPU, "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with _autocast(CPU, None):
        assert (x @ w).dtype == torch.float32


def test_sweep_records_precision_and_resumes_older_stores(tiny_pair, tmp_path, monkeypatch,  # noqa: F811
                                                          capsys):
    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_pair, out, "--layers", "3", "--modes", "finetune", "--baselines",
                      "none", "--precision", "auto")
    assert main(argv) == 0
    rows = ResultsStore(out, read_only=True).table()
    assert set(rows["precision"]) == {"fp32"} and len(rows) == 2
    fp32_ids = set(rows["run_id"])
    assert main(argv + ["--precision", "bf16"]) == 0  # other runs: bf16 is in their specs
    rows = ResultsStore(out, read_only=True).table()
    assert len(rows) == 4 and set(rows["precision"]) == {"fp32", "bf16"}
    assert fp32_ids < set(rows["run_id"])
    # A CPU that computes bf16: auto records bf16 in a new directory ...
    monkeypatch.setattr(device_mod, "bf16_pays", lambda d: True)
    assert main(sweep_argv(tiny_pair, tmp_path / "new", "--layers", "3", "--modes", "finetune",
                           "--baselines", "none", "--precision", "auto")) == 0
    assert set(ResultsStore(tmp_path / "new", read_only=True).table()["precision"]) == {"bf16"}
    # ... but a directory of runs stored before the option resumes them in their arithmetic.
    old = tmp_path / "old"
    monkeypatch.setattr(device_mod, "bf16_pays", lambda d: False)
    assert main(sweep_argv(tiny_pair, old, "--layers", "3", "--modes", "finetune",
                           "--baselines", "none", "--precision", "auto")) == 0
    _forget_precision(old)
    monkeypatch.setattr(device_mod, "bf16_pays", lambda d: True)
    capsys.readouterr()
    assert main(sweep_argv(tiny_pair, old, "--layers", "2,3", "--modes", "finetune",
                           "--baselines", "none", "--precision", "auto")) == 0
    err = capsys.readouterr().err
    assert "holds runs from before --precision" in err and "2 already done" in err
    rows = ResultsStore(old, read_only=True).table()
    assert len(rows) == 4 and set(rows["precision"]) == {"", "fp32"}


def _forget_precision(out):
    """Make `out`'s rows look written before the precision column existed."""
    store = ResultsStore(out)
    store.compact()
    import pyarrow.parquet as pq
    for part in (out / "results").glob("*.parquet"):
        table = pq.read_table(part)
        i = table.schema.get_field_index("precision")
        pq.write_table(table.set_column(i, "precision", [[""] * table.num_rows]), part)
    log = out / "results" / "_runs.jsonl"
    if log.exists():
        import json
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        log.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "precision"}) + "\n"
                               for r in lines))
