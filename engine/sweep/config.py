"""Study files and stored sweeps as the starting point of `engine sweep`:

    engine sweep --config study.toml [flags]     keys are the flags' names, e.g. `n-train = 512`;
                                                 values as on the command line (`betas = "0,0.5"`)
                                                 or as TOML numbers, arrays and booleans
                                                 (`betas = [0, 0.5]`, `dry-run = true`)
    engine sweep --from DIR [flags]              DIR/sweep.json (--out defaults to DIR)

Flags given on the command line override the file's values. With `--from`, the stored spec is
taken whole (fields no flag sets included, e.g. a hand-edited `alice.lr`), and each flag given on
the command line replaces the fields it sets: the spec a flag changes is found by building the
sweep's spec with and without it (engine.sweep.parse), so every flag keeps exactly its meaning.
The same values give the same SweepSpec, hence the same run IDs, however they were written.
A bad key, type or value is one line naming the file and the key's line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

from engine import flags, paths
from engine.errors import EngineError
from engine.sweep.spec import SweepSpec

SOURCES = ("config", "from")  # flags that name a starting point; not allowed inside a study file


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"""^\s*(\[\s*)?(["']?){re.escape(key)}\2\s*[=\]]""")  # key = or [key]
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def read_config(path) -> tuple[list[str], dict[str, int]]:
    """(flag tokens, {flag name: line}) of a study file; EngineError naming the key and line."""
    import tomllib
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EngineError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EngineError(f"{path}: not valid TOML ({exc})") from None
    known = flags.options("sweep")
    out: list[str] = []
    lines: dict[str, int] = {}
    for key, value in values.items():
        line = _line_of(text, key)
        where = f"{path} line {line}" if line else str(path)
        if key in SOURCES or key not in known:
            import difflib
            near = difflib.get_close_matches(key.replace("_", "-"), [k for k in known
                                                                     if k not in SOURCES], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise EngineError(f"{where}: unknown key {key!r}{hint}; keys are the names of "
                              "`engine sweep` flags without '--', e.g. n-train")
        if isinstance(value, dict):
            raise EngineError(f"{where}: {key} must be a value, not a table")
        if isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value):
            raise EngineError(f"{where}: {key} must be a flat array")
        try:
            out += flags.tokens("sweep", {key: value})
        except EngineError as exc:
            raise EngineError(f"{where}: {exc}") from None
        lines[key] = line or 0
    return out, lines


def _explicit(argv: list[str]) -> dict:
    """The flags given on the command line (after `sweep`), without --config/--from."""
    ns = flags.parse("sweep", argv, suppress_defaults=True)
    return {k: v for k, v in vars(ns).items() if k not in ("config", "from_dir")}


def _from_file(path: Path, tokens_: list[str], lines: dict[str, int], explicit: dict):
    """Parse the file's tokens, then the command line's flags over them; errors that name a flag
    the file set carry its line."""
    def located(exc: EngineError) -> EngineError:
        for key, line in lines.items():
            if f"--{key}" in str(exc) and key.replace("-", "_") not in explicit:
                return EngineError(f"{path} line {line}: {exc}")
        return exc
    try:
        ns = flags.parse("sweep", tokens_)
    except EngineError as exc:
        raise located(exc) from None
    vars(ns).update(explicit)
    from engine.sweep.parse import sweep_spec
    try:
        return sweep_spec(ns), ns
    except EngineError as exc:
        raise located(exc) from None


def spec_flags(s: SweepSpec) -> dict:
    """The flag values that give `s` (as far as flags can: fields without a flag are left out)."""
    return {
        "pair": s.pair, "betas": list(s.betas),
        "layers": s.layers if s.layers == "all" else list(s.layers),
        "seeds": list(s.seeds), "arch": list(s.archs), "modes": list(s.modes) or None,
        "baselines": list(s.baselines) or "none", "n-bob": list(s.n_bobs),
        "epochs": s.bob.epochs, "optimizer": s.bob.optimizer, "lr": s.bob.lr,
        "batch-size": s.bob.batch_size, "alice-epochs": s.alice.epochs, "depth": s.depth,
        "width": s.width, "n-train": s.n_train, "n-test": s.n_test,
        "block-shuffle": ["none" if b is None else b for b in s.block_shuffles],
        "data-root": s.data_root, "device": s.device, "device-budget-gb": s.device_budget_gb,
        "executor": s.executor, "max-group": s.max_group, "ray-address": s.ray_address,
        "cpus-per-unit": s.cpus_per_unit, "gpus-per-unit": s.gpus_per_unit,
        "max-retries": s.max_retries, "precision": s.precision,
    }


def read_stored(directory) -> SweepSpec:
    path = paths.sweep_file(Path(directory))
    try:
        text = path.read_text()
    except OSError as exc:
        raise EngineError(f"--from {directory}: no stored sweep ({path}: "
                          f"{exc.strerror or exc}); give the --out of an earlier sweep") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EngineError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EngineError(f"{path}: must hold a JSON object")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(SweepSpec)})
    if unknown:
        line = _json_line(text, unknown[0])
        raise EngineError(f"{path}" + (f" line {line}" if line else "")
                          + f": unknown field {unknown[0]!r}")
    try:
        return SweepSpec.from_dict(data)
    except TypeError as exc:
        raise EngineError(f"{path}: {exc}") from None
    except EngineError as exc:
        raise EngineError(f"{path}: {exc}") from None


def _json_line(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if f'"{key}"' in line:
            return number
    return None


def _changed(base, new, stored):
    """`stored` with every field where `new` differs from `base` taken from `new` (one level
    into dataclass fields such as the Training options)."""
    changes = {}
    for f in dataclasses.fields(stored):
        b, n = getattr(base, f.name), getattr(new, f.name)
        if b == n:
            continue
        if dataclasses.is_dataclass(n) and dataclasses.is_dataclass(getattr(stored, f.name)):
            changes[f.name] = _changed(b, n, getattr(stored, f.name))
        else:
            changes[f.name] = n
    return dataclasses.replace(stored, **changes)


def resolve(args: argparse.Namespace, argv: list[str]) -> tuple[SweepSpec, argparse.Namespace]:
    """The SweepSpec and final flags of `engine sweep` whose parsed flags are `args` and whose
    tokens after `sweep` are `argv`."""
    from engine.sweep.parse import sweep_spec
    config, source = getattr(args, "config", None), getattr(args, "from_dir", None)
    if config is None and source is None:
        return sweep_spec(args), args
    if config is not None and source is not None:
        raise EngineError("--config and --from cannot be combined; put the study's options in "
                          "one of them")
    explicit = _explicit(argv)
    if config is not None:
        tokens_, lines = read_config(config)
        spec, ns = _from_file(Path(config), tokens_, lines, explicit)
        return spec, ns
    stored = read_stored(source)
    base_tokens = flags.tokens("sweep", spec_flags(stored))
    base_ns = flags.parse("sweep", base_tokens)
    base = sweep_spec(base_ns)
    ns = argparse.Namespace(**{**vars(base_ns), **explicit})
    if "out" not in explicit:
        ns.out = str(source)
    return _changed(base, sweep_spec(ns), stored), ns
