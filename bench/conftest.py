"""Benchmark session plumbing: the machine each run was measured on, its measured peak, and the
ratios the project tracks, with their floors.

**Declaring a tracked ratio.** A benchmark that measures two sides of the same work in one run
asks for the `track` fixture and calls it once per ratio it tracks (higher is better):

    def test_build(benchmark, track):
        ...
        track("build mnist:fashion vs DatasetWriter", engine_rate / writer_rate,
              floor=15, ci_floor=12)

- `name`: what is compared, the same across commits: the history groups runs by it.
- `floor`: the project's goal for the ratio; `python -m bench.history` flags a run under it.
- `ci_floor` (optional): the least an honest run of the quick bench gives on the CI machine, set
  from the spread measured in bench/RESULTS.md. With `--ci-floors` (`make bench-quick`,
  `.ci/run`) a tracked ratio under its CI floor fails its test, after every ratio of the test has
  been recorded.
- `spread` (optional): the ratio's run-to-run spread as a fraction of its value (0.2 = 20%), as
  measured; the history also learns it from earlier runs and uses the larger of the two.
- `workload` (optional): the sizes, when environment variables can change them: runs of other
  sizes are a different figure and are never compared with these.

Each ratio lands in the benchmark's `extra_info["ratios"][name]` (value, floor, ci_floor, spread,
workload) and so in the saved JSON. Only workloads users run are tracked (a sweep command, a
build), not micro-benchmarks that no command produces.

**Machine and peak.** Saved runs (`make bench` autosaves under `.benchmarks/` or
`$BENCH_STORAGE`) carry in `machine_info`: `cpu_model`, `cores`, `bf16_native` (the CPU computes
bf16: avx512_bf16 or amx_bf16 in /proc/cpuinfo), `gpu`, `torch`, `kind` (the history compares
runs of the same kind only) and `peak_gflop_per_s`: the best rate of a large matmul, fp32 and,
where the hardware computes it natively, bf16, on the CPU (torch's threads as the benchmarks use
them) and on a CUDA device. The `peak` fixture measures it once per session.

**Planted regressions** (for showing that the quick bench catches them, bench/RESULTS.md):
`BENCH_PLANT=page-kernel` runs every page of a build through the page kernel twice,
`BENCH_PLANT=batched-step` every batched training step twice (both pure: results unchanged).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path

import pytest

CPU_N, CUDA_N = 2048, 8192  # matmul sizes: large enough for BLAS to run at its peak
MIN_SECONDS, MIN_REPS = 0.3, 3  # per measured peak
PLANTS = ("page-kernel", "batched-step")
_PEAK_KEY = pytest.StashKey[dict]()
_RATIOS_KEY = pytest.StashKey[list]()  # (test id, name, record) of this session
_THREADS_KEY = pytest.StashKey[tuple]()  # (torch, numba) thread counts before collection


# Machine -----------------------------------------------------------------------------------------

def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bf16_native(cpuinfo: str) -> bool:
    """Whether the CPU has bf16 arithmetic instructions (AVX-512 BF16 or AMX)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def gpu_name() -> str | None:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_kind(cpu: str, cores: int, bf16: bool, gpu: str | None) -> str:
    """What makes two runs comparable: the same processor, cores, bf16 ability and GPU."""
    return f"{cpu}, {cores} cores" + (", bf16" if bf16 else "") + (f", {gpu}" if gpu else "")


def describe_machine() -> dict:
    path = Path("/proc/cpuinfo")
    cpuinfo = path.read_text() if path.exists() else ""
    info = {"cpu_model": cpu_model(cpuinfo), "cores": os.cpu_count(),
            "bf16_native": bf16_native(cpuinfo), "gpu": gpu_name(),
            "torch": importlib.metadata.version("torch")}
    info["kind"] = machine_kind(info["cpu_model"], info["cores"], info["bf16_native"], info["gpu"])
    return info


def matmul_gflops(device: str, dtype, n: int) -> float:
    """Best GFLOP/s of an n x n matmul (2 n^3 FLOP) over at least MIN_REPS runs and MIN_SECONDS."""
    import torch
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b  # warm: library initialisation, kernel choice
    sync()
    best, spent, reps = float("inf"), 0.0, 0
    while reps < MIN_REPS or spent < MIN_SECONDS:
        t0 = time.perf_counter()
        a @ b
        sync()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return 2 * n**3 / best / 1e9


def measure_peak(bf16_cpu: bool) -> dict:
    """GFLOP/s: cpu_fp32, cpu_bf16 (None unless native), cuda_fp32 and cuda_bf16 (with a GPU;
    fp32 without TF32, torch's default)."""
    import torch
    peak = {"cpu_fp32": matmul_gflops("cpu", torch.float32, CPU_N),
            "cpu_bf16": matmul_gflops("cpu", torch.bfloat16, CPU_N) if bf16_cpu else None,
            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        peak["cuda_fp32"] = matmul_gflops("cuda", torch.float32, CUDA_N)
        peak["cuda_bf16"] = (matmul_gflops("cuda", torch.bfloat16, CUDA_N)
                             if torch.cuda.is_bf16_supported() else None)
    return peak


def _peak(config) -> dict:
    if _PEAK_KEY not in config.stash:
        config.stash[_PEAK_KEY] = measure_peak(describe_machine()["bf16_native"])
    return config.stash[_PEAK_KEY]


@pytest.fixture(scope="session")
def peak(pytestconfig) -> dict:
    """This machine's measured matmul peak, GFLOP/s (see `measure_peak`), once per session."""
    return _peak(pytestconfig)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(describe_machine())
    machine_info["peak_gflop_per_s"] = _peak(config)


# Tracked ratios ----------------------------------------------------------------------------------

def pytest_addoption(parser):
    parser.addoption("--ci-floors", action="store_true",
                     help="fail a benchmark whose tracked ratio is under its CI floor")


def pytest_configure(config):
    import numba
    import torch
    config.stash[_RATIOS_KEY] = []
    config.stash[_THREADS_KEY] = (torch.get_num_threads(), numba.get_num_threads())
    plant = os.environ.get("BENCH_PLANT", "")
    if plant and plant not in PLANTS:
        raise pytest.UsageError(f"BENCH_PLANT={plant}: expected one of {', '.join(PLANTS)}")


@pytest.fixture
def track(request, benchmark):
    """track(name, value, floor, ci_floor=None, spread=None, workload="") records a tracked
    ratio of this benchmark (see the module docstring)."""
    def record(name: str, value: float, floor: float, ci_floor: float | None = None,
               spread: float | None = None, workload: str = "") -> None:
        entry = {"value": float(value), "floor": floor, "ci_floor": ci_floor, "spread": spread,
                 "workload": workload}
        benchmark.extra_info.setdefault("ratios", {})[name] = entry
        request.config.stash[_RATIOS_KEY].append((request.node.nodeid, name, entry))
    return record


def _under_ci_floor(entry: dict) -> bool:
    return entry["ci_floor"] is not None and entry["value"] < entry["ci_floor"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if item.config.getoption("ci_floors"):
        under = [f"{name} = {e['value']:.2f}x, CI floor {e['ci_floor']}x"
                 for node, name, e in item.config.stash[_RATIOS_KEY]
                 if node == item.nodeid and _under_ci_floor(e)]
        if under:
            pytest.fail("tracked ratio under its CI floor: " + "; ".join(under), pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter, config):
    ratios = config.stash.get(_RATIOS_KEY, [])
    if not ratios:
        return
    terminalreporter.section("tracked ratios")
    for node, name, e in ratios:
        flag = ("UNDER CI FLOOR" if _under_ci_floor(e)
                else "under floor" if e["value"] < e["floor"] else "ok")
        ci = f", CI floor {e['ci_floor']}x" if e["ci_floor"] is not None else ""
        terminalreporter.write_line(f"{name}: {e['value']:.2f}x (floor {e['floor']}x{ci}) {flag}")


@pytest.fixture(scope="session", autouse=True)
def _threads(pytestconfig):
    """Importing FFCV, which collection does for the skip marks, sets torch and numba to one
    thread for the whole process; `engine` commands do not import it. Benchmarks run with the
    counts the process started with (OMP_NUM_THREADS, NUMBA_NUM_THREADS)."""
    import numba
    import torch
    torch_n, numba_n = pytestconfig.stash[_THREADS_KEY]
    torch.set_num_threads(torch_n)
    numba.set_num_threads(numba_n)
    yield


# Planted regressions -----------------------------------------------------------------------------

def _twice(fn):
    def slowed(*args):
        fn(*args)
        return fn(*args)
    return slowed


@pytest.fixture(scope="session", autouse=True)
def _plant():
    """BENCH_PLANT=page-kernel|batched-step: a 2x slowdown of that kernel, for this session."""
    plant = os.environ.get("BENCH_PLANT", "")
    with pytest.MonkeyPatch.context() as mp:
        if plant == "page-kernel":
            from engine.data import build
            from engine.kernels import compose
            mp.setattr(build, "fill_composed", _twice(compose.fill_composed))
            mp.setattr(compose, "fill_composed", _twice(compose.fill_composed))
        elif plant == "batched-step":
            from engine.train import grouped
            step_fn = grouped.step_fn
            mp.setattr(grouped, "step_fn", lambda *a: _twice(step_fn(*a)))
        yield
