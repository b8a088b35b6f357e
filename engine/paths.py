"""Every path the engine reads or writes is built here.

Resolution order for roots: explicit argument, then environment variable, then a default.
- data root (source datasets, torchvision layout): `--data-root`, `ENGINE_DATA_ROOT`, `./data`
- cache (decoded sources as memory-mapped arrays): `ENGINE_CACHE_DIR`, `$XDG_CACHE_HOME/engine`,
  `~/.cache/engine`
- output (built datasets): `--out`, `ENGINE_OUT`, `./out/datasets`
- sweep root (datasets, Alices, results): `--out`, `ENGINE_SWEEP_OUT`, `./out/sweep`
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def data_root(arg: str | os.PathLike | None = None) -> Path:
    if arg is not None:
        return Path(arg).expanduser()
    env = os.environ.get("ENGINE_DATA_ROOT")
    return Path(env).expanduser() if env else Path("data")


def cache_dir() -> Path:
    env = os.environ.get("ENGINE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "engine"


def source_cache(key: str) -> Path:
    """Directory holding one decoded source split (images.npy, labels.npy, meta.json)."""
    return cache_dir() / "sources" / key


def checksum_entry(tag: str) -> Path:
    """File memoising one source file's SHA-256; `tag` names the file's path, size and mtime."""
    return cache_dir() / "checksums" / hashlib.sha256(tag.encode()).hexdigest()[:32]


def datasets_out(arg: str | os.PathLike | None = None) -> Path:
    if arg is not None:
        return Path(arg).expanduser()
    env = os.environ.get("ENGINE_OUT")
    return Path(env).expanduser() if env else Path("out") / "datasets"


def dataset_dir(out: Path, key: str) -> Path:
    return out / key


def split_file(dataset: Path, split: str) -> Path:
    return dataset / f"{split}.beton"


def manifest_file(dataset: Path) -> Path:
    return dataset / "manifest.json"


# Sweep outputs, all under one sweep root `out` (the store keeps its own layout under results/).

def sweep_out(arg: str | os.PathLike | None = None) -> Path:
    """Sweep root: `--out`, `ENGINE_SWEEP_OUT`, `./out/sweep`."""
    if arg is not None:
        return Path(arg).expanduser()
    env = os.environ.get("ENGINE_SWEEP_OUT")
    return Path(env).expanduser() if env else Path("out") / "sweep"


def sweep_datasets(out: Path) -> Path:
    return out / "datasets"


def sweep_file(out: Path) -> Path:
    """The sweep's SweepSpec as JSON (engine.sweep.spec), written by the driver."""
    return out / "sweep.json"


def study_file(out: Path) -> Path:
    """A case study's plan (engine.studies.case_study)."""
    return out / "study.json"


def run_state(out: Path) -> Path:
    """What the driver is doing or last did under `out` (engine.sweep.state), for `engine status`."""
    return out / "run-state.json"


def report_dir(out: Path) -> Path:
    """`engine report` (and the case study's report): PNGs, summary.md, report.html."""
    return out / "report"


def report_page(directory: Path) -> Path:
    """The self-contained HTML page of a report directory (engine.pages)."""
    return directory / "report.html"


def alice_dir(out: Path, alice_id: str) -> Path:
    return out / "alice" / alice_id


def alice_checkpoint(out: Path, alice_id: str) -> Path:
    """Alice's final weights; written last, so its presence marks the directory complete."""
    return alice_dir(out, alice_id) / "model.safetensors"


def alice_epoch_checkpoint(out: Path, alice_id: str, epoch: int) -> Path:
    """Alice's weights after `epoch` epochs (0 = at initialisation)."""
    return alice_dir(out, alice_id) / f"epoch-{epoch}.safetensors"


def manifold_figures(out: Path) -> Path:
    """PNGs of `engine manifold-sweep` (engine.studies.manifold_figures)."""
    return out / "manifold"


# Analyses (`engine analyze`), under the sweep root `out`; their tables live in the store
# (engine.store.write_analysis).

def analysis_dir(out: Path) -> Path:
    """PNGs of `engine analyze`; the store's analysis tables live in subdirectories."""
    return out / "analysis"


def feature_cache(out: Path, name: str) -> Path:
    """One cached activation array, `<model-id>-<split>-l<k>.npy` (engine.analysis.artifacts)."""
    return analysis_dir(out) / "cache" / f"{name}.npy"


def bob_checkpoint(out: Path, run_id: str) -> Path:
    """Bob's weights, re-created on demand by engine.analysis.artifacts.bob_model."""
    return out / "bob" / f"{run_id}.safetensors"


# `engine reproduce DIR` (engine.studies.claims): one shared sweep root for every claim's runs,
# the studies' directories, each claim's stored evidence, and the report.

def reproduce_out(arg: str | os.PathLike | None = None) -> Path:
    """`--out`, `ENGINE_REPRODUCE_OUT`, `./out/reproduce`."""
    if arg is not None:
        return Path(arg).expanduser()
    env = os.environ.get("ENGINE_REPRODUCE_OUT")
    return Path(env).expanduser() if env else Path("out") / "reproduce"


def claims_runs(out: Path) -> Path:
    """The sweep root every claim's sweeps train into (a normal sweep directory)."""
    return out / "runs"


def claims_study(out: Path, study_id: str) -> Path:
    """The output directory of one study (toy, case study, manifold sweep)."""
    return out / "studies" / study_id


def claims_evidence(out: Path, claim_id: str) -> Path:
    """A claim's evaluated evidence (JSON), reused on resume while its inputs are unchanged."""
    return out / "claims" / f"{claim_id}.json"


def claims_work(out: Path, claim_id: str) -> Path:
    """A claim's own directory for intermediate files."""
    return out / "claims" / claim_id


def claims_figure(out: Path, claim_id: str) -> Path:
    return out / "figures" / f"{claim_id}.png"


def verdicts_file(out: Path) -> Path:
    """One object per claim run: id, paper, effect, ci_low, ci_high, seeds, verdict, ..."""
    return out / "verdicts.json"
