"""The results store: one row per finished Bob run, as Parquet files under `<out>/results/`.

This is the only module that knows the layout:
- `part-<utc time>-<uuid8>.parquet`: rows flushed together (at least every 64 rows or 60 s);
- `results.parquet`: what `compact` merged all parts into;
- `_runs.jsonl`: the write-ahead log. Every row is appended and fsynced here before `record`
  returns, so a killed sweep loses no finished run; on open, rows logged but in no Parquet file
  are written as a new part. The leading `_` makes pyarrow (hence `pandas.read_parquet(dir)`)
  skip it; a name without it would be read as a broken Parquet file.
Temporary files start with `.` (see engine.atomic), which pyarrow skips and `*.parquet` globs
(DuckDB) do not match. One writer per store at a time (a sweep holds engine.locks.output_lock on its
root); readers may open it with `read_only=True`.

The run log is the source of truth. Every Parquet file has the XXH3-128 digest of its bytes beside
it (`.<name>.xxh3`, written before the file is renamed into place), a digest of its rows (key-value
metadata `engine.rows_digest`) and Parquet page checksums; on open each file is read whole and
checked. A damaged or unreadable file is reported in one line and set
aside as `.<name>.damaged-<time>` (read-only: skipped), and its rows come back from the run log, so
readers and a resuming sweep keep working.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import xxhash

from engine.atomic import os_error
from engine.errors import EngineError

COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "alice_id": pa.string(),          # empty for scratch / random-frozen
    "dataset": pa.string(),           # dataset key
    "pair": pa.string(),
    "beta": pa.float64(),
    "block_shuffle": pa.int64(),      # block size B of the dataset's block shuffle, pixels; 0 = none
    "arch": pa.string(),
    "seed": pa.int64(),
    "retrain_from": pa.int64(),       # l: layers 1..l-1 kept, l..L trained (scratch: 1)
    "n_layers": pa.int64(),           # L
    "mode": pa.string(),              # finetune | reinit | scratch | random-frozen
    "n_bob": pa.int64(),              # Bob training samples actually used
    "epochs": pa.int64(),
    "optimizer": pa.string(),
    "lr": pa.float64(),
    "batch_size": pa.int64(),
    "test_acc": pa.float64(),         # fraction in [0, 1]
    "test_loss": pa.float64(),
    "train_acc": pa.float64(),
    "train_loss": pa.float64(),
    "alice_test_acc": pa.float64(),   # NaN when there is no Alice
    "chance": pa.float64(),           # 1 / number of Bob classes
    "wall_s": pa.float64(),
    "samples_per_s": pa.float64(),
    "device": pa.string(),
    "executor": pa.string(),          # serial | batched | ... (engine.sweep.executors); "" = older
    "precision": pa.string(),         # fp32 | bf16 (autocast) as the run computed; "" = older
    "engine_version": pa.string(),
    "finished_at": pa.string(),       # ISO 8601, UTC
    "computed_by": pa.string(),       # "" = this run trained; else the run_id whose training
                                      # gave these metrics (same computation_id, engine.spec)
    "spec_json": pa.string(),         # the run's full spec, canonical JSON
}
SCHEMA = pa.schema(list(COLUMNS.items()))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _engine_version() -> str:
    from engine import __version__
    return __version__


# Columns a row may leave out, and how to fill them. Every other column is required.
OPTIONAL = {
    "alice_id": lambda: "",
    "alice_test_acc": lambda: math.nan,
    "engine_version": _engine_version,
    "finished_at": _now_iso,
}

# Columns added after stores were first written: their value in rows (log lines, parts, callers)
# from before; a row may leave them out too.
ADDED = {"block_shuffle": 0, "computed_by": "", "executor": "", "precision": ""}

FLUSH_ROWS = 64        # rows buffered before a part is written
FLUSH_SECONDS = 60.0   # seconds a row may wait in the buffer
LOG_NAME = "_runs.jsonl"
COMPACT_NAME = "results.parquet"


def validate(row: dict) -> dict:
    """`row` checked against COLUMNS and converted to plain Python values, in COLUMNS order."""
    if not isinstance(row, dict):
        raise ValueError(f"a results row must be a dict, got {type(row).__name__}")
    unknown = [k for k in row if k not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown results column(s): {', '.join(map(str, unknown))}")
    missing = [k for k in COLUMNS if k not in row and k not in OPTIONAL and k not in ADDED]
    if missing:
        raise ValueError(f"missing results column(s): {', '.join(missing)}")
    out = {}
    for name, dtype in COLUMNS.items():
        value = row[name] if name in row else ADDED[name] if name in ADDED else OPTIONAL[name]()
        out[name] = _convert(name, dtype, value)
    if not out["run_id"]:
        raise ValueError("results column run_id must not be empty")
    return out


def _convert(name: str, dtype: pa.DataType, value):
    bad = ValueError(f"results column {name} must be {dtype}, "
                     f"got {value!r} ({type(value).__name__})")
    if isinstance(value, (bool, np.bool_)):
        raise bad
    if dtype == pa.string():
        if not isinstance(value, str):
            raise bad
        return value
    if dtype == pa.int64():
        if not isinstance(value, (int, np.integer)):
            raise bad
        return int(value)
    if value is None:  # float columns: None means "not measured"
        return math.nan
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise bad
    return float(value)


DIGEST_KEY = b"engine.rows_digest"


def rows_digest(table: pa.Table) -> str:
    """XXH3-128 over the table's rows as JSON (column names and values, in order)."""
    h = xxhash.xxh3_128()
    h.update(json.dumps(table.schema.names).encode())
    for row in table.to_pylist():
        h.update(json.dumps(list(row.values()), separators=(",", ":"), default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


class DamagedPart(Exception):
    """A Parquet file of the store that cannot be read or whose rows do not match their digest."""


def _digest_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.xxh3")


def _write_verified(table: pa.Table, path: Path) -> None:
    """`table` as Parquet at `path` (atomic, fsynced), its bytes' digest written beside it first."""
    from engine.atomic import write_bytes
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)
    data = sink.getvalue().to_pybytes()
    write_bytes(_digest_path(path), (xxhash.xxh3_128_hexdigest(data) + "\n").encode())
    write_bytes(path, data)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _digest_path(path).unlink(missing_ok=True)


def _read_verified(path: Path) -> pa.Table:
    """The whole file as written, checked against its digest, page checksums and rows digest."""
    try:
        recorded_bytes = _digest_path(path).read_text().strip()
    except FileNotFoundError:
        recorded_bytes = None  # written by an older engine: the rows digest still checks it
    except OSError as exc:
        raise DamagedPart(f"its digest is unreadable: {exc.strerror or exc}") from None
    if recorded_bytes is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DamagedPart(exc.strerror or str(exc)) from None
        if xxhash.xxh3_128_hexdigest(data) != recorded_bytes:
            raise DamagedPart("its bytes do not match the digest recorded when it was written")
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        recorded = (table.schema.metadata or {}).get(DIGEST_KEY)
    except (OSError, pa.ArrowException, ValueError) as exc:  # ArrowInvalid, IOError, ...
        raise DamagedPart(" ".join(str(exc).split())[:160] or type(exc).__name__) from None
    if recorded is not None and rows_digest(table.replace_schema_metadata(None)) != recorded.decode():
        raise DamagedPart("its rows do not match the digest recorded when it was written")
    return table


def _conform(path: Path, table: pa.Table, columns: list[str] | None = None) -> pa.Table:
    names = columns or list(COLUMNS)
    present = set(table.schema.names)
    missing = [n for n in names if n not in present and n not in ADDED]
    if missing:
        raise EngineError(f"{path} is not a results file of this engine version "
                          f"(missing column(s) {', '.join(missing)}); move it away")
    table = table.replace_schema_metadata(None)
    table = table.select([n for n in names if n in present])
    for n in names:
        if n not in present:
            table = table.append_column(n, pa.array([ADDED[n]] * len(table), COLUMNS[n]))
    return table.select(names).cast(pa.schema([(n, COLUMNS[n]) for n in names]))


def _read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return _conform(path, _read_verified(path), columns)
    except DamagedPart as exc:
        raise EngineError(f"{path} is damaged ({exc}); open the store to rebuild it from "
                          f"{LOG_NAME}") from None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ResultsStore:
    """Append-only store of finished runs; see the module docstring for the layout."""

    def __init__(self, out: Path, *, read_only: bool = False, log=_stderr):
        self.dir = Path(out) / "results"
        self.log = self.dir / LOG_NAME
        self.read_only = read_only
        self._say = log or (lambda msg: None)
        self._buffer: list[dict] = []
        self._buffer_since = 0.0
        self._stored: set[str] = set()        # run_ids in Parquet files or in the buffer
        self._unflushed: list[dict] = []      # read-only: logged rows in no Parquet file
        self._tables: dict[Path, pa.Table] = {}  # verified Parquet files, conformed to COLUMNS
        self._damaged: set[Path] = set()      # read-only: damaged files skipped
        if self.dir.exists() and not self.dir.is_dir():
            raise EngineError(f"{self.dir} is a file, not the results directory; move it away")
        for part in self._parts():
            self._stored.update(self._table_of(part).column("run_id").to_pylist())
        self._recover()

    def _table_of(self, part: Path) -> pa.Table:
        """A Parquet file's rows, verified once per store object; a damaged one is reported, set
        aside (read-only: skipped) and read as empty: its rows come back from the run log."""
        if part not in self._tables:
            try:
                self._tables[part] = _conform(part, _read_verified(part))
            except DamagedPart as exc:
                self._set_aside(part, str(exc))
                self._tables[part] = pa.Table.from_pylist([], schema=SCHEMA)
        return self._tables[part]

    def _set_aside(self, part: Path, reason: str) -> None:
        if self.read_only:
            self._damaged.add(part)
            self._say(f"results: {part} is damaged ({reason}); its rows are read from {LOG_NAME} "
                      "(run `engine sweep` or open the store for writing to rebuild it)")
            return
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = part.with_name(f".{part.name}.damaged-{stamp}")
        try:
            os.replace(part, aside)
            _digest_path(part).unlink(missing_ok=True)
        except OSError as exc:
            raise os_error(exc, "move aside the damaged results file", part) from None
        self._say(f"results: {part.name} is damaged ({reason}); moved to {aside.name} and rebuilt "
                  f"from {LOG_NAME}")

    # -- reading -------------------------------------------------------------------------------

    def _parts(self) -> list[Path]:
        """Parquet files in reading order: the compacted file, then parts oldest first."""
        if not self.dir.is_dir():
            return []
        compact = self.dir / COMPACT_NAME
        found = ([compact] if compact.is_file() else []) + sorted(self.dir.glob("part-*.parquet"))
        return [p for p in found if p not in self._damaged]

    def _log_rows(self) -> list[dict]:
        """Rows in the write-ahead log. A line cut short by a kill is skipped."""
        if not self.log.is_file():
            return []
        rows = []
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise os_error(exc, "read the run log", self.log) from None
        for number, line in enumerate(text.splitlines(), 1):
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue
            try:
                rows.append(validate(raw))
            except ValueError as exc:
                raise EngineError(f"{self.log} line {number}: {exc}") from None
        return rows

    def _recover(self) -> None:
        lost, seen = [], set(self._stored)
        for row in self._log_rows():
            if row["run_id"] not in seen:
                seen.add(row["run_id"])
                lost.append(row)
        if self.read_only:
            self._unflushed = lost
            self._stored = seen
            return
        if self.log.is_file() and self.log.stat().st_size:
            try:
                with open(self.log, "rb+") as f:  # end a cut-short line so the next append is whole
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
            except OSError as exc:
                raise os_error(exc, "write the run log", self.log) from None
        if lost:
            self._write_part(lost)
            self._stored = seen

    def completed_ids(self) -> set[str]:
        return set(self._stored)

    def _arrow(self) -> pa.Table:
        tables = [self._table_of(p) for p in self._parts()]
        rows = self._unflushed + self._buffer
        tables.append(pa.Table.from_pylist(rows, schema=SCHEMA))
        return pa.concat_tables(tables)

    def table(self) -> pd.DataFrame:
        """All rows, one per run_id (the first stored wins), columns in COLUMNS order."""
        df = self._arrow().to_pandas()
        return df.drop_duplicates("run_id", keep="first").reset_index(drop=True)

    # -- writing -------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError("this ResultsStore was opened read_only")

    def record(self, row: dict) -> None:
        """Log one finished run durably and buffer it; a run_id already stored is ignored."""
        self._check_writable()
        row = validate(row)
        if row["run_id"] in self._stored:
            return
        line = json.dumps(row, separators=(",", ":")) + "\n"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise os_error(exc, "record the run in", self.log) from None
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.append(row)
        self._stored.add(row["run_id"])
        waited = time.monotonic() - self._buffer_since
        if len(self._buffer) >= FLUSH_ROWS or waited >= FLUSH_SECONDS:
            self.flush()

    def _write_part(self, rows: list[dict]) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.dir / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        self._write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), path)
        return path

    def _write_parquet(self, table: pa.Table, path: Path) -> None:
        table = table.replace_schema_metadata({DIGEST_KEY: rows_digest(table).encode()})
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_verified(table, path)
        except OSError as exc:
            raise os_error(exc, "write", path) from None
        self._tables[path] = _conform(path, table)

    def flush(self) -> None:
        if not self._buffer:
            return
        self._check_writable()
        self._write_part(self._buffer)
        self._buffer = []

    def close(self) -> None:
        if not self.read_only:
            self.flush()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:  # also on exceptions and KeyboardInterrupt
        self.close()

    def compact(self) -> None:
        """Merge every Parquet file into results.parquet, then delete the parts. A kill between
        the two leaves rows in both; `table` and `completed_ids` still count each run once."""
        self._check_writable()
        self.flush()
        old = self._parts()
        if not old:
            return
        merged = self._arrow()
        _, first = np.unique(np.array(merged.column("run_id").to_pylist(), dtype=object),
                             return_index=True)
        self._write_parquet(merged.take(np.sort(first)), self.dir / COMPACT_NAME)
        for part in old:
            if part.name != COMPACT_NAME:
                _remove(part)
                self._tables.pop(part, None)


# Analysis tables ---------------------------------------------------------------------------------
# `engine analyze` results beside the runs: `<out>/analysis/<kind>/part-<utc time>-<uuid8>.parquet`,
# any columns, one part per call. Later parts repeat earlier keys when an analysis is re-run; readers
# keep what they need (e.g. the last row per key).

def _analysis_dir(out, kind: str) -> Path:
    from engine import paths
    if not kind or not all(c.isalnum() or c in "-_" for c in kind):
        raise ValueError(f"analysis kind must be letters, digits, '-' or '_', got {kind!r}")
    return paths.analysis_dir(Path(out)) / kind


def write_analysis(out, kind: str, rows: list[dict]) -> Path:
    """Write `rows` (flat dicts of str/int/float/bool) as one new Parquet part; return its path."""
    if not rows:
        raise ValueError("write_analysis needs at least one row")
    directory = _analysis_dir(out, kind)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, "create", directory) from None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = directory / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           DIGEST_KEY: rows_digest(table).encode()})
    try:
        _write_verified(table, path)
    except OSError as exc:
        raise os_error(exc, "write", path) from None
    return path


def read_analysis(out, kind: str, log=_stderr) -> pd.DataFrame:
    """Every row written for `kind`, parts oldest first; an empty frame when there are none. A
    damaged part is reported in one line and skipped (re-run the analysis to recompute it)."""
    directory = _analysis_dir(out, kind)
    parts = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
    frames = []
    for p in parts:
        try:
            table = _read_verified(p)
        except DamagedPart as exc:
            if log:
                log(f"analysis: {p} is damaged ({exc}); skipped (re-run `engine analyze {kind}`)")
            continue
        frames.append(table.replace_schema_metadata(None).to_pandas())
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)
