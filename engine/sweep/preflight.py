"""What a sweep checks before any work, in `--dry-run` too (a dry run refuses what the real
command refuses), beyond the SweepSpec's own checks:

- `--n-bob` above the training samples each dataset will have (`--n-train`, else the left
  source's training split, read from its cached arrays);
- `--ray-address HOST:PORT` that nothing answers on, or `auto` with no cluster to find;
- notices, one line each, for options the chosen executor does not use (they are kept in
  `sweep.json` and change nothing).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

from engine.errors import EngineError
from engine.sweep.spec import SweepSpec

CONNECT_TIMEOUT_S = 3.0
RAY_CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # where `ray start` notes its address

# Options that only one executor uses: (field, flag, default, executors that use it).
EXECUTOR_OPTIONS = (
    ("max_group", "--max-group", None, ("batched", "ray")),
    ("cpus_per_unit", "--cpus-per-unit", 1.0, ("ray",)),
    ("gpus_per_unit", "--gpus-per-unit", 0.0, ("ray",)),
    ("max_retries", "--max-retries", 2, ("ray",)),
)


def ignored_options(sweep: SweepSpec) -> list[str]:
    """One notice per option set away from its default that `sweep.executor` does not use."""
    notes = []
    for field, flag, default, users in EXECUTOR_OPTIONS:
        if sweep.executor not in users and getattr(sweep, field) != default:
            notes.append(f"{flag} is ignored by --executor {sweep.executor} (it applies to "
                         f"--executor {' and '.join(users)})")
    return notes


def training_samples(sweep: SweepSpec) -> int:
    """The training samples of every dataset of `sweep`: --n-train, else the left source's."""
    if sweep.n_train is not None:
        return sweep.n_train
    from engine.data.build import planned_dataset
    spec, _ = planned_dataset(sweep.pair, sweep.betas[0], seed=sweep.data_seed,
                              data_root=sweep.data_root, fit=sweep.fit,
                              image_size=sweep.image_size, n_test=sweep.n_test)
    return spec.n_train


def _check_n_bob(sweep: SweepSpec, dry_run: bool, log: Callable[[str], None]) -> None:
    wanted = [n for n in sweep.n_bobs if n is not None]
    if not wanted:
        return
    try:
        size = training_samples(sweep)
    except EngineError as exc:
        if not dry_run:
            raise
        log(f"notice: --n-bob not checked against the training split's size ({exc})")
        return
    if max(wanted) > size:
        where = "--n-train" if sweep.n_train is not None else f"the left source of {sweep.pair}"
        raise EngineError(f"--n-bob {max(wanted)} exceeds the {size} training samples of each "
                          f"dataset ({where}); use at most {size} or 'all'")


def _reachable(address: str) -> str | None:
    """None when something accepts a TCP connection at HOST:PORT, else why not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _check_ray_address(sweep: SweepSpec) -> None:
    address = sweep.ray_address
    if sweep.executor != "ray" or address is None:
        return
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS")
        if env and env != "auto" and not env.startswith("ray://"):
            address = env.split("//")[-1]
        elif env or RAY_CURRENT_CLUSTER.is_file():
            return
        else:
            raise EngineError("--ray-address auto found no running Ray cluster on this machine "
                              "(no RAY_ADDRESS, no `ray start` here); start one with "
                              "`ray start --head`, give HOST:PORT, or drop --ray-address to start "
                              "a local instance")
    why = _reachable(address)
    if why is not None:  # the Ray executor's words when it meets the same (engine.sweep.ray_executor)
        raise EngineError(f"no Ray cluster answers at {address} ({why}); start one with "
                          f"`ray start --head --port={address.rpartition(':')[2]}`")


def check(sweep: SweepSpec, *, dry_run: bool = False,
          log: Callable[[str], None] = lambda m: None) -> None:
    """EngineError (one line) for what would fail after work has begun; notices to `log`."""
    _check_n_bob(sweep, dry_run, log)
    _check_ray_address(sweep)
    for note in ignored_options(sweep):
        log(f"notice: {note}")
