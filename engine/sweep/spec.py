"""`SweepSpec`: every option of one `engine sweep`, as one frozen value (no torch).

The CLI builds it (engine.sweep.parse turns flag strings into values), the driver writes it as
`<out>/sweep.json` beside `results/`, and the planner (engine.sweep.plan) expands it into runs. Which
options change what a run computes is decided by the run specs (engine.spec.BobSpec), not here:
`executor`, `max_group`, `device`, `device_budget_gb` and the Ray options (`ray_address`,
`cpus_per_unit`, `gpus_per_unit`, `max_retries`) change only how the runs are carried out.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Sequence

from engine.errors import EngineError
from engine.spec import BASELINES, PRECISIONS, TRANSFER_MODES, Training

DEVICES = ("auto", "cpu", "cuda")
EXECUTORS = ("serial", "batched", "ray")  # engine.sweep.executors.EXECUTORS runs them
RAY_MISSING = ("--executor ray needs Ray, an optional dependency; install it with: "
               "pip install 'engine-transfer[ray]'")


def require_ray() -> None:
    """One line (EngineError) saying how to install Ray, when it is not importable."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EngineError(RAY_MISSING) from None


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: datasets per (beta, block size), Alices per (beta, arch, seed), Bob runs per
    (l, mode, n_bob) and baselines. See README "The experiment: engine sweep"."""
    pair: str
    betas: tuple[float, ...]
    layers: str | tuple[int, ...] = "all"
    seeds: tuple[int, ...] = (0,)
    archs: tuple[str, ...] = ("cnn",)
    modes: tuple[str, ...] = TRANSFER_MODES
    baselines: tuple[str, ...] = BASELINES
    n_bobs: tuple[int | None, ...] = (None,)  # None = the whole training split
    bob: Training = Training()
    alice: Training = Training()
    depth: int | None = None
    width: int | None = None
    global_pool: bool = False
    data_seed: int = 0
    n_train: int | None = None  # None = the left source's split size
    n_test: int | None = None
    fit: str = "pad"
    image_size: int = 32
    block_shuffles: tuple[int | None, ...] = (None,)  # None = unshuffled
    alice_save_epochs: tuple[int, ...] = ()
    data_root: str | None = None
    datasets_dir: str | None = None  # where datasets are built or reused (None: <out>/datasets)
    device: str = "auto"
    device_budget_gb: float | None = None  # larger datasets stream from disk (None: half free)
    executor: str = "batched"
    max_group: int | None = None  # cap on runs trained together (None: the memory budget decides)
    ray_address: str | None = None  # executor "ray": "auto", HOST:PORT, or None (a local instance)
    cpus_per_unit: float = 1.0  # executor "ray": resources each Ray task declares
    gpus_per_unit: float = 0.0
    max_retries: int = 2  # executor "ray": retries of a task whose worker or node died
    precision: str = "auto"  # auto | fp32 | bf16; each run's spec records what it resolves to

    def __post_init__(self):
        for name in ("betas", "seeds", "archs", "modes", "baselines", "n_bobs", "block_shuffles",
                     "alice_save_epochs"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise EngineError(f"{name} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(dict.fromkeys(value)))
        if self.layers != "all":
            object.__setattr__(self, "layers", tuple(dict.fromkeys(self.layers)))
        for name in ("bob", "alice"):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, Training(**getattr(self, name)))
        if not self.block_shuffles:
            raise EngineError("--block-shuffle must list at least one block size or 'none'")
        if self.device not in DEVICES:
            raise EngineError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        if self.precision not in ("auto",) + PRECISIONS:
            raise EngineError(f"unknown precision {self.precision!r}; choose one of: auto, "
                              f"{', '.join(PRECISIONS)}")
        if self.executor not in EXECUTORS:
            raise EngineError(f"unknown executor {self.executor!r}; choose one of: "
                              f"{', '.join(EXECUTORS)}")
        budget = self.device_budget_gb
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not (math.isfinite(budget) and budget > 0)):
            raise EngineError(f"--device-budget-gb must be a positive number, got {budget!r}")
        k = self.max_group
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise EngineError(f"--max-group must be a positive integer, got {k!r}")
        self._check_ray()
        from engine.sweep.plan import alices, expand  # validate every run option before any work
        expand(self)
        alices(self)

    def _check_ray(self) -> None:
        address = self.ray_address
        if address is not None:
            if self.executor != "ray":
                raise EngineError("--ray-address needs --executor ray")
            host, _, port = str(address).rpartition(":")
            if address != "auto" and not (host and port.isdigit() and 0 < int(port) < 65536):
                raise EngineError(f"--ray-address must be 'auto' or HOST:PORT, got {address!r}")
        for name in ("cpus_per_unit", "gpus_per_unit"):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                    or v < 0 or (v > 1 and v != int(v))):
                raise EngineError(f"--{name.replace('_', '-')} must be a fraction in [0, 1] or a "
                                  f"whole number, got {v!r}")
        if not self.cpus_per_unit and not self.gpus_per_unit:
            raise EngineError("--cpus-per-unit and --gpus-per-unit must not both be 0")
        r = self.max_retries
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise EngineError(f"--max-retries must be a non-negative integer, got {r!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> SweepSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise EngineError(f"sweep spec has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **changes) -> SweepSpec:
        return dataclasses.replace(self, **changes)
