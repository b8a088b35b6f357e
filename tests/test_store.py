"""The results store: schema, durability (write-ahead log, recovery), dedup, readers, compaction."""
from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow as pa
import pytest

from engine import store as store_module
from engine.store import COLUMNS, ResultsStore


def row(i: int, **overrides) -> dict:
    r = {
        "run_id": f"run{i:04d}", "alice_id": "alice0", "dataset": "ds-abc", "pair": "mnist:svhn",
        "beta": 0.5, "arch": "mlp", "seed": i, "retrain_from": 2, "n_layers": 4,
        "mode": "finetune", "n_bob": 1000, "epochs": 3, "optimizer": "sgd", "lr": 0.1,
        "batch_size": 128, "test_acc": 0.5 + i / 1000, "test_loss": 1.2, "train_acc": 0.6,
        "train_loss": 1.0, "alice_test_acc": 0.97, "chance": 0.1, "wall_s": 2.5,
        "samples_per_s": 1200.0, "device": "cpu", "engine_version": "0.1.0",
        "finished_at": "2024-01-01T00:00:00+00:00", "spec_json": json.dumps({"i": i}),
    }
    r.update(overrides)
    return r


def parquet_files(out):
    return sorted((out / "results").glob("*.parquet"))


def test_schema_and_dtypes(tmp_path):
    with ResultsStore(tmp_path) as s:
        s.record(row(0))
        s.record(row(1, alice_id="", mode="scratch", retrain_from=1, alice_test_acc=None))
    df = ResultsStore(tmp_path).table()
    assert list(df.columns) == list(COLUMNS)
    for name, dtype in COLUMNS.items():
        if dtype == pa.int64():
            assert df[name].dtype == "int64", name
        elif dtype == pa.float64():
            assert df[name].dtype == "float64", name
        else:
            assert pd.api.types.is_string_dtype(df[name]), name
    assert math.isnan(df.loc[1, "alice_test_acc"]) and df.loc[1, "alice_id"] == ""


def test_record_flush_reopen_and_completed_ids(tmp_path):
    s = ResultsStore(tmp_path)
    assert s.completed_ids() == set() and s.table().empty
    assert not (tmp_path / "results").exists()  # created on first write only
    for i in range(3):
        s.record(row(i))
    assert s.completed_ids() == {"run0000", "run0001", "run0002"}  # buffered rows count
    assert len(s.table()) == 3
    s.flush()
    s.flush()  # empty: no new part
    assert len(parquet_files(tmp_path)) == 1
    again = ResultsStore(tmp_path)
    assert again.completed_ids() == {"run0000", "run0001", "run0002"}
    assert again.table()["test_acc"].tolist() == [0.5, 0.501, 0.502]


def test_kill_before_flush_recovers_from_log(tmp_path):
    s = ResultsStore(tmp_path)
    s.record(row(0))
    s.flush()
    s.record(row(1))
    s.record(row(2))
    del s  # killed: rows 1 and 2 only in the log
    assert len(parquet_files(tmp_path)) == 1
    recovered = ResultsStore(tmp_path)
    assert recovered.completed_ids() == {"run0000", "run0001", "run0002"}
    assert len(parquet_files(tmp_path)) == 2
    del recovered
    again = ResultsStore(tmp_path)  # nothing left to recover: no new part, no duplicates
    assert len(parquet_files(tmp_path)) == 2
    assert sorted(again.table()["run_id"]) == ["run0000", "run0001", "run0002"]
    assert len(pd.read_parquet(tmp_path / "results")) == 3


def test_line_cut_short_by_a_kill_is_skipped_and_next_append_is_whole(tmp_path):
    with ResultsStore(tmp_path) as s:
        s.record(row(0))
    log = tmp_path / "results" / store_module.LOG_NAME
    with open(log, "a") as f:
        f.write('{"run_id": "run0001", "alice')  # the kill hit mid-write
    s = ResultsStore(tmp_path)
    assert s.completed_ids() == {"run0000"}
    s.record(row(2))
    del s
    assert ResultsStore(tmp_path).completed_ids() == {"run0000", "run0002"}


def test_duplicate_run_id_is_ignored(tmp_path):
    with ResultsStore(tmp_path) as s:
        s.record(row(0))
        s.record(row(0, test_acc=0.9))  # in the buffer
    with ResultsStore(tmp_path) as s:
        s.record(row(0, test_acc=0.8))  # in a part
    df = ResultsStore(tmp_path).table()
    assert df["test_acc"].tolist() == [0.5]
    assert len(pd.read_parquet(tmp_path / "results")) == 1


def test_unknown_missing_and_mistyped_columns_are_rejected(tmp_path):
    s = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="unknown results column.*colour"):
        s.record(row(0, colour="red"))
    bad = row(0)
    del bad["test_acc"]
    with pytest.raises(ValueError, match="missing results column.*test_acc"):
        s.record(bad)
    with pytest.raises(ValueError, match="seed"):
        s.record(row(0, seed=1.5))
    with pytest.raises(ValueError, match="beta"):
        s.record(row(0, beta="0.5"))
    with pytest.raises(ValueError, match="run_id"):
        s.record(row(0, run_id=""))
    assert s.completed_ids() == set() and not (tmp_path / "results").exists()


def test_optional_columns_get_defaults(tmp_path):
    r = row(0)
    for name in store_module.OPTIONAL:
        del r[name]
    with ResultsStore(tmp_path) as s:
        s.record(r)
    got = ResultsStore(tmp_path).table().iloc[0]
    assert got["alice_id"] == "" and math.isnan(got["alice_test_acc"])
    assert got["engine_version"] and got["finished_at"].endswith("+00:00")


def test_automatic_flush_by_rows_and_by_time(tmp_path, monkeypatch):
    s = ResultsStore(tmp_path)
    for i in range(store_module.FLUSH_ROWS):
        s.record(row(i))
    assert len(parquet_files(tmp_path)) == 1 and not s._buffer
    monkeypatch.setattr(store_module, "FLUSH_SECONDS", 0.0)
    s.record(row(1000))
    assert len(parquet_files(tmp_path)) == 2


def test_context_manager_flushes_on_exception(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with ResultsStore(tmp_path) as s:
            s.record(row(0))
            raise KeyboardInterrupt
    assert len(parquet_files(tmp_path)) == 1


def test_pandas_and_duckdb_read_the_files(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    with ResultsStore(tmp_path) as s:
        for i in range(3):
            s.record(row(i))
            s.flush()
        s.record(row(3))
    assert len(parquet_files(tmp_path)) == 4
    ids = sorted(pd.read_parquet(tmp_path / "results")["run_id"])
    assert ids == [f"run{i:04d}" for i in range(4)]
    files = f"{tmp_path}/results/*.parquet"
    got = duckdb.sql(f"select count(*), avg(test_acc) from read_parquet('{files}')")
    [(count, mean)] = got.fetchall()
    assert count == 4 and mean == pytest.approx(0.5015)


def test_compact_keeps_rows(tmp_path):
    with ResultsStore(tmp_path) as s:
        for i in range(5):
            s.record(row(i))
            s.flush()
        s.record(row(5))
        before = s.table()
        s.compact()
        assert [p.name for p in parquet_files(tmp_path)] == ["results.parquet"]
        pd.testing.assert_frame_equal(s.table(), before)
        s.record(row(6))
    after = ResultsStore(tmp_path)
    assert len(after.table()) == 7 and len(after.completed_ids()) == 7
    after.compact()
    assert [p.name for p in parquet_files(tmp_path)] == ["results.parquet"]
    assert len(pd.read_parquet(tmp_path / "results")) == 7


def test_read_only_sees_unflushed_rows_and_writes_nothing(tmp_path):
    s = ResultsStore(tmp_path)
    s.record(row(0))  # a running sweep's buffered row, in the log only
    reader = ResultsStore(tmp_path, read_only=True)
    assert reader.completed_ids() == {"run0000"} and len(reader.table()) == 1
    assert parquet_files(tmp_path) == []
    with pytest.raises(RuntimeError):
        reader.record(row(1))
