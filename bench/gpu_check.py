"""The phases of the one-shot GPU check; bench/gpu_check.sh runs each in its own time-boxed process.

    python bench/gpu_check.py PHASE        # PHASE: one of PHASES below, in the order the .sh runs

Every printed line starts with its phase's tag (ENV PROBE CONV GROUP RATE HEADS SERIAL ACC ALICE
SUMMARY). Each phase appends its figures as JSON lines to $OUT/results.jsonl; RATE and SUMMARY
read them back, so a phase that failed or timed out only leaves its own figures missing.

Settings (environment; the .sh exports its defaults):
  DEVICE        cuda | cpu                                    (cuda)
  N_TRAIN       training samples of the built dataset, or all (all = 60000)
  N_TEST        test samples, or all                          (all = 10000)
  SEEDS         seeds of the sweep mix and Alices, 15 runs per seed        (0,1,2)
  EPOCHS        Bob's epochs in GROUP, HEADS and SERIAL       (1)
  ALICE_EPOCHS  Alice's epochs                                (1)
  HEADS         K of the head-only workloads                  (128,512)
  SERIAL_LAYERS l of the SERIAL/ACC mix (finetune, reinit, random-frozen)  (4,5)
  N_NAIVE       training samples per naive run (rate scaled to N_TRAIN)    (min(N_TRAIN, 10000))
  CONV_K, CONV_BATCH, CONV_ITERS   the CONV sweep             (1,8,32; 128; 20 on CUDA)
  SCRATCH       scratch root, outside $OUT                    (/tmp/gpucheck)
  OUT           where results.jsonl goes                      ($SCRATCH/out)
  PHASE_TIMEOUT seconds this phase may take (set by the .sh; phases skip work that cannot fit)
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

PHASES = ("env", "data", "probe", "conv", "alice", "group", "rate", "heads", "serial", "naive",
          "summary")
TAGS = {"env": "ENV", "data": "ENV", "probe": "PROBE", "conv": "CONV", "alice": "ALICE",
        "group": "GROUP", "rate": "RATE", "heads": "HEADS", "serial": "SERIAL",
        "naive": "SERIAL", "summary": "SUMMARY"}
ARCH, PAIR, BETA = "cnn", "mnist:fashion", 0.75
# The paper-size sweep RATE extrapolates to: 5 betas x 3 seeds, 60k samples, 10 epochs.
PAPER_BETAS, PAPER_SEEDS, PAPER_N, PAPER_EPOCHS = 5, 3, 60000, 10
TARGET_RATE, TARGET_HEADS, TARGET_NAIVE = 10_000, 100_000, 10.0  # fine-tunes/h; x naive
ACC_TOL = 0.01  # |test acc serial - batched| taken as within seed noise (1 point)
STARTED = time.monotonic()
STEP = ["start"]  # what the phase is doing, for the line printed when it is stopped


# Settings and records -----------------------------------------------------------------------------

def _env_list(name: str, default: str) -> list[int]:
    text = os.environ.get(name, "") or default
    return [int(s) for s in text.replace(" ", "").split(",") if s]


def _env_count(name: str) -> int | None:
    text = os.environ.get(name, "all") or "all"
    return None if text == "all" else int(text)


DEVICE = os.environ.get("DEVICE", "cuda")
N_TRAIN, N_TEST = _env_count("N_TRAIN"), _env_count("N_TEST")
SEEDS = _env_list("SEEDS", "0,1,2")
EPOCHS = int(os.environ.get("EPOCHS", "1"))
ALICE_EPOCHS = int(os.environ.get("ALICE_EPOCHS", "1"))
HEADS = _env_list("HEADS", "128,512")
SERIAL_LAYERS = _env_list("SERIAL_LAYERS", "4,5")
SCRATCH = Path(os.environ.get("SCRATCH", "/tmp/gpucheck"))
OUT = Path(os.environ.get("OUT", "") or SCRATCH / "out")
RESULTS = OUT / "results.jsonl"
TIMEOUT = float(os.environ.get("PHASE_TIMEOUT", "600"))


def say(tag: str, text: str) -> None:
    print(f"{tag} {text}", flush=True)


def left() -> float:
    """Seconds this phase has before the .sh stops it."""
    return TIMEOUT - (time.monotonic() - STARTED)


def record(phase: str, **data) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"phase": phase, **data}, default=str) + "\n")


def records(phase: str) -> list[dict]:
    if not RESULTS.is_file():
        return []
    out = []
    for line in RESULTS.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("phase") == phase:
            out.append(r)
    return out


def one_line(exc: BaseException, n: int = 200) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:n]}"


def rate(runs: float, seconds: float | None) -> str:
    return "n/a" if not seconds or seconds <= 0 else f"{runs * 3600 / seconds:,.0f}/h"


def per_hour(runs: float, seconds: float | None) -> float | None:
    return None if not seconds or seconds <= 0 else runs * 3600 / seconds


# Torch helpers ------------------------------------------------------------------------------------

def torch_device():
    import torch
    return torch.device(DEVICE)


def is_cuda() -> bool:
    import torch
    return DEVICE.startswith("cuda") and torch.cuda.is_available()


def sync() -> None:
    import torch
    if is_cuda():
        torch.cuda.synchronize()


class Watch:
    """Dynamo's compiles, recompiles (with their first guard failure) and graph breaks."""

    def __init__(self):
        import torch
        self.reasons: list[str] = []
        torch._logging.set_logs(recompiles=True)  # also printed to stderr: the detail log
        watch = self

        class Handler(logging.Handler):
            def emit(self, rec):
                msg = rec.getMessage()
                if "Recompiling function" in msg:
                    lines = [s.strip(" -") for s in msg.splitlines()]
                    watch.reasons.append(lines[2] if len(lines) > 2 else lines[0])

        logging.getLogger("torch._dynamo.guards").addHandler(Handler())

    def snap(self) -> tuple[int, int, int]:
        from torch._dynamo.utils import counters
        return (len(self.reasons), counters["stats"].get("unique_graphs", 0),
                sum(counters["graph_break"].values()))

    def since(self, snap) -> dict:
        now = self.snap()
        new = self.reasons[snap[0]:]
        return {"recompiles": now[0] - snap[0], "graphs": now[1] - snap[1],
                "breaks": now[2] - snap[2], "reason": new[0][:90] if new else ""}


def dataset_dir() -> Path:
    path = SCRATCH / "dataset.txt"
    if not path.is_file():
        raise RuntimeError("no dataset: the ENV data step failed")
    return Path(path.read_text().strip())


def sweep_inputs():
    """(dataset key, {key: dir}, Alice specs, the default cnn sweep mix for SEEDS)."""
    from engine.spec import Training
    from engine.sweep.expand import alice_spec, expand_sweep
    d = dataset_dir()
    alice_t, bob_t = Training(epochs=ALICE_EPOCHS), Training(epochs=EPOCHS)
    alices = [alice_spec(d.name, ARCH, s, alice_t) for s in SEEDS]
    mix = expand_sweep([BETA], [ARCH], SEEDS, datasets={BETA: d.name}, bob=bob_t, alice=alice_t)
    return d.name, {d.name: d}, alices, mix


def n_trained(specs) -> int:
    return len({s.computation_id for s in specs})


def frozen_of(spec) -> int:
    from engine.spec import frozen_prefix, n_layers
    return frozen_prefix(n_layers(spec.arch, spec.depth, spec.width, spec.global_pool),
                         spec.retrain_from, spec.mode)


def seed_alices(root: Path) -> bool:
    """Copy the ALICE phase's serial Alices into `root` (execute reuses complete ones)."""
    src = SCRATCH / "alice-serial" / "alice"
    if src.is_dir():
        shutil.copytree(src, root / "alice", dirs_exist_ok=True)
        return True
    return False


def results_table(root: Path):
    from engine.store import ResultsStore
    return ResultsStore(root, read_only=True, log=None).table()


_HOOK: dict = {}  # where the wrappers below report: tag, watch, calls, serial_runs


def instrument(tag: str, watch: Watch, calls: list, serial_runs: list | None = None):
    """Wrap batched.train_group (one line per call: K, frozen depth, wall, recompiles, peak
    memory, and the dicts it appended to batched.GROUP_STATS) and executors.run_bob (serial runs,
    timed, into `serial_runs` when given). Wrapped once per process; later calls only redirect
    the reports."""
    _HOOK.update(tag=tag, watch=watch, calls=calls, serial_runs=serial_runs)
    if _HOOK.get("installed"):
        return
    _HOOK["installed"] = True
    import torch
    from engine.sweep import executors
    from engine.train import batched
    original, run_bob = batched.train_group, executors.run_bob

    def train_group(members, device, *args, **kwargs):
        watch = _HOOK["watch"]
        stats = getattr(batched, "GROUP_STATS", None)
        n0 = len(stats) if stats is not None else 0
        if is_cuda():
            sync()
            torch.cuda.reset_peak_memory_stats()
        snap, t0 = watch.snap(), time.perf_counter()
        ok = False
        try:
            out = original(members, device, *args, **kwargs)
            ok = True
            return out
        finally:
            sync()
            wall = time.perf_counter() - t0
            try:
                frozen = frozen_of(members[0].spec)
            except Exception:  # noqa: BLE001 -- a label only
                frozen = "?"
            call = {"frozen": frozen, "K": len(members), "wall_s": round(wall, 2), "ok": ok,
                    "peak_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                 if is_cuda() else None), **watch.since(snap)}
            stats = getattr(batched, "GROUP_STATS", None)
            call["stats"] = [dict(s) for s in list(stats)[n0:]] if stats is not None else None
            _HOOK["calls"].append(call)
            print_call(_HOOK["tag"], call)

    def timed_run_bob(spec, *args, **kwargs):
        t0 = time.perf_counter()
        out = run_bob(spec, *args, **kwargs)
        sync()
        if _HOOK["serial_runs"] is not None:
            _HOOK["serial_runs"].append({"frozen": frozen_of(spec),
                                         "wall_s": time.perf_counter() - t0})
        return out

    batched.train_group = train_group
    if hasattr(executors, "train_group"):  # in case it is imported by name
        executors.train_group = train_group
    executors.run_bob = timed_run_bob


def _f(value, fmt: str = ".2f", none: str = "?") -> str:
    return none if value is None else format(value, fmt)


def print_call(tag: str, call: dict) -> None:
    tail = (f"recompiles {call['recompiles']}"
            + (f" [{call['reason'][:60]}]" if call["reason"] else "")
            + (f" breaks {call['breaks']}" if call["breaks"] else "")
            + f" peak {_f(call['peak_gib'], '.1f', 'n/a')}GiB wall {call['wall_s']:.1f}s"
            + ("" if call["ok"] else " FAILED"))
    stats = call["stats"]
    if stats is None:
        say(tag, f"no stats (batched.GROUP_STATS absent): f={call['frozen']} K={call['K']} "
                 f"graphs {call['graphs']} {tail}")
        return
    if not stats:
        say(tag, f"no stats appended: f={call['frozen']} K={call['K']} {tail}")
        return
    for i, s in enumerate(stats):
        line = (f"f={s.get('frozen', call['frozen'])} K={s.get('K')}/{s.get('K_padded')} "
                f"n={s.get('n')} steps={s.get('steps')} compile {_f(s.get('compile_s'), '.1f')}s "
                f"host {_f(s.get('host_ms_per_step'))} gpu {_f(s.get('gpu_ms_per_step'))} "
                f"ms/step feats {s.get('features')} peak {_f(s.get('peak_mem_gib'), '.1f')}GiB")
        say(tag, line + (f"; call: {tail}" if i == len(stats) - 1 else ""))


def group_stats(calls: list) -> list[dict]:
    return [s for c in calls for s in (c.get("stats") or [])]


def on_term(tag: str):
    def handler(signum, frame):
        say(tag, f"stopped by the time box during: {STEP[0]}")
        sys.stdout.flush()
        os._exit(124)
    return handler


# ENV ----------------------------------------------------------------------------------------------

def phase_env() -> None:
    import platform
    import torch
    smi = "nvidia-smi absent"
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                              "memory.used", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=15).stdout.strip().replace("\n", "; ") or smi
    except (OSError, subprocess.SubprocessError) as exc:
        smi = f"nvidia-smi: {one_line(exc, 60)}"
    say("ENV", f"nvidia-smi: {smi}")
    cuda = torch.cuda.is_available()
    line = (f"python {platform.python_version()} torch {torch.__version__} cuda "
            f"{torch.version.cuda} cudnn {torch.backends.cudnn.version()} cpus {os.cpu_count()}")
    if cuda:
        free, total = torch.cuda.mem_get_info()
        p = torch.cuda.get_device_properties(0)
        line += (f" | gpu {torch.cuda.get_device_name(0)} cc {p.major}.{p.minor} "
                 f"{p.multi_processor_count} SMs, free {free / 2**30:.1f} of {total / 2**30:.1f}"
                 f" GiB")
    else:
        line += " | no CUDA"
    say("ENV", line)
    try:
        with open("/proc/meminfo") as f:
            mem = {l.split(":")[0]: int(l.split()[1]) for l in f}
        say("ENV", f"host memory free {mem['MemAvailable'] / 2**20:.1f} of "
                   f"{mem['MemTotal'] / 2**20:.1f} GiB")
    except (OSError, KeyError, ValueError):
        pass
    mods = []
    for mod in ("numpy", "numba", "scipy", "pandas", "pyarrow", "safetensors", "filelock",
                "xxhash", "PIL", "ot", "ffcv", "triton"):
        try:
            m = __import__(mod)
            mods.append(f"{mod} {getattr(m, '__version__', 'ok')}")
        except Exception:  # noqa: BLE001 -- only whether it imports
            mods.append(f"{mod} absent")
    say("ENV", "modules: " + ", ".join(mods).replace(" absent", " ABSENT")
        + " (ot: only `analyze` needs it)")
    say("ENV", f"config: DEVICE={DEVICE} N_TRAIN={N_TRAIN or 'all'} N_TEST={N_TEST or 'all'} "
               f"SEEDS={','.join(map(str, SEEDS))} EPOCHS={EPOCHS} ALICE_EPOCHS={ALICE_EPOCHS} "
               f"HEADS={','.join(map(str, HEADS))} scratch {SCRATCH}")
    from engine.sweep import executors
    from engine.train import batched, grouped  # noqa: F401 -- imports checked
    own = "own" if "pretrain" in vars(executors.BatchedExecutor) else "inherited from Executor"
    say("ENV", f"engine imports ok; batched.GROUP_STATS "
               f"{'present' if hasattr(batched, 'GROUP_STATS') else 'absent'}; "
               f"BatchedExecutor.pretrain {own}")
    record("env", torch=torch.__version__, cuda=torch.version.cuda,
           gpu=torch.cuda.get_device_name(0) if cuda else None, cpus=os.cpu_count())


def phase_data() -> None:
    out = SCRATCH / "datasets"
    cmd = [sys.executable, "-m", "engine", "build-data", "--pair", PAIR, "--beta", str(BETA),
           "--out", str(out)]
    cmd += ["--n-train", str(N_TRAIN)] if N_TRAIN else []
    cmd += ["--n-test", str(N_TEST)] if N_TEST else []
    root = os.environ.get("ENGINE_DATA_ROOT", "data")
    if not (Path(root) / "MNIST" / "raw").is_dir():
        say("ENV", f"data: {root}/MNIST/raw missing (carry the ignored ./data folder)")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=max(5, left() - 3))
    seconds = time.perf_counter() - t0
    lines = p.stdout.strip().splitlines()
    if p.returncode or not lines or not Path(lines[-1]).is_dir():
        raise RuntimeError(f"build-data exit {p.returncode}: {' '.join(lines[-2:])}")
    d = Path(lines[-1])
    (SCRATCH / "dataset.txt").write_text(str(d))
    from engine.data.manifest import read_manifest
    spec = read_manifest(d)["spec"]
    say("ENV", f"data: {PAIR} beta {BETA} {spec['n_train']}+{spec['n_test']} samples, "
               f"built or reused in {seconds:.1f}s: {d.name}")
    record("data", seconds=seconds, n_train=spec["n_train"], n_test=spec["n_test"], dir=str(d))


# PROBE --------------------------------------------------------------------------------------------

def probe_feedback() -> None:
    """A tiny SGD step under reduce-overhead whose outputs are the next step's inputs."""
    import torch
    if not is_cuda():
        say("PROBE", "feedback under reduce-overhead: skipped: no CUDA")
        return
    dev = torch_device()

    def step(w, buf, x):
        g = 2 * x.t() @ (x @ w) / x.shape[0]  # d/dw mean((x w)^2) summed over outputs
        buf = 0.9 * buf + g
        return w - 0.01 * buf, buf, ((x @ w) ** 2).mean()

    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(256, 64, device=dev, generator=g)
    w0 = torch.randn(64, 64, device=dev, generator=g) / 8
    ref = (w0.clone(), torch.zeros_like(w0))
    for _ in range(5):
        ref = step(*ref, x)[:2]
    f = torch.compile(step, mode="reduce-overhead", fullgraph=True, dynamic=False)
    for variant in ("outputs fed back", "clones fed back"):
        STEP[0] = f"feedback probe, {variant}"
        state, t0, done = (w0.clone(), torch.zeros_like(w0)), time.perf_counter(), 0
        try:
            for s in range(5):  # cudagraph trees warm up, record, then replay
                torch.compiler.cudagraph_mark_step_begin()
                w, buf, loss = f(*state, x)
                state = (w, buf) if variant == "outputs fed back" else (w.clone(), buf.clone())
                loss.item()
                done = s + 1
            diff = (state[0] - ref[0]).abs().max().item()
            say("PROBE", f"reduce-overhead, {variant}: 5 steps ok in "
                         f"{time.perf_counter() - t0:.1f}s, max |w - eager| {diff:.1e}")
            record("probe", test="feedback", variant=variant, ok=True, diff=diff)
        except Exception as exc:  # noqa: BLE001 -- the probe's finding
            say("PROBE", f"reduce-overhead, {variant}: step {done + 1} raised {one_line(exc, 150)}")
            record("probe", test="feedback", variant=variant, ok=False, step=done + 1,
                   error=one_line(exc, 300))


def _probe_members(k: int, n: int):
    import numpy as np
    from engine.spec import BobSpec
    from engine.train.batched import Member
    from engine.train.device import DeviceData
    rng = np.random.default_rng(0)
    dev = torch_device()

    def data(m):
        return DeviceData.from_arrays(rng.integers(0, 256, (m, 28, 56, 1), dtype=np.uint8),
                                      {"bob_label": rng.integers(0, 10, m),
                                       "alice_label": rng.integers(0, 10, m)}, dev)

    train, test = data(n), data(256)
    # random-frozen at l = 4: layers 1-3 frozen (fresh), one conv block and the head trained
    return [Member(BobSpec(alice_id="", dataset="probe", arch=ARCH, retrain_from=4,
                           mode="random-frozen", seed=s, epochs=1, n_bob=n), train, test, None, 10)
            for s in range(k)]


def probe_step(watch: Watch) -> None:
    """engine.train.grouped.step_fn as built, called the way the batched trainer calls it."""
    import torch
    from engine.train import grouped
    from engine.train.freeze import prepare_bob
    from engine.train.models import build_model
    dev, compile_ = torch_device(), is_cuda()
    K, B, frozen = 8, 128, 3
    STEP[0] = "engine step_fn probe"
    model = build_model(ARCH, (28, 56, 1), 10).to(dev, memory_format=torch.channels_last)
    program = grouped.program(model, frozen)
    states = []
    for s in range(K):
        prepare_bob(model, None, retrain_from=frozen + 1, mode="random-frozen", seed=s)
        states.append({n: t.detach().clone() for n, t in model.state_dict().items()})
    tail = [n for n in states[0] if int(n.split(".")[1]) >= frozen]
    pnames = [n for n, _ in model.named_parameters() if n in tail]
    bnames = [n for n in tail if n not in pnames and not n.endswith("num_batches_tracked")]
    params = grouped.pack(program, states, pnames)
    buffers = grouped.pack(program, states, bnames)
    opt = {"buf": {n: torch.zeros_like(p) for n, p in params.items()}}
    with torch.no_grad():
        shape = model.activations(torch.zeros(1, 1, 28, 56, device=dev))[frozen - 1].shape[1:]
    x = torch.randn(K, B, *shape, device=dev)
    y = torch.randint(0, 10, (K, B), device=dev)
    hyper = grouped.hyper_table("sgd", 0.01, 3, dev)
    # Arguments by name, so the probe follows the step's signature as the lead changes it.
    have = {"program": program, "prefix": (), "optimizer": "sgd", "device": dev,
            "compile": compile_}
    fn = grouped.step_fn(**{k: have[k] for k in inspect.signature(grouped.step_fn).parameters
                            if k in have})
    names = list(inspect.signature(grouped._step).parameters)
    # What the compiled step takes: everything after the arguments step_fn binds.
    names = names[max(names.index(k) for k in ("optimizer", "precision") if k in names) + 1:]
    snap, t0, done = watch.snap(), time.perf_counter(), 0
    try:
        for s in range(3):
            given = {"params": params, "buffers": buffers, "opt": opt, "frozen": {}, "x": x,
                     "y": y, "hyper": hyper[s]}
            unknown = [n for n in names if n not in given]
            if unknown:
                raise TypeError(f"the step takes {names}; the probe knows no {unknown}")
            out = fn(*(given[n] for n in names))
            if isinstance(out, tuple) and len(out) == 5:  # state fed back, as the trainer does
                params, buffers, opt, loss, _ = out
                loss.sum().item()
            done = s + 1
        sync()
        w = watch.since(snap)
        say("PROBE", f"engine step_fn (f={frozen}, K={K}, B={B}, "
                     f"{'compiled' if compile_ else 'eager: no CUDA'}): 3 steps ok in "
                     f"{time.perf_counter() - t0:.1f}s, graphs {w['graphs']}, recompiles "
                     f"{w['recompiles']}{' [' + w['reason'] + ']' if w['reason'] else ''}")
        record("probe", test="step_fn", ok=True, compiled=compile_, **w)
    except Exception as exc:  # noqa: BLE001 -- the probe's finding
        say("PROBE", f"engine step_fn: step {done + 1} raised {one_line(exc, 170)}")
        record("probe", test="step_fn", ok=False, step=done + 1, error=one_line(exc, 300))


def probe_train_group(watch: Watch) -> None:
    """The batched trainer's whole path for 3 steps: 8 members, synthetic data."""
    from engine.train import batched
    STEP[0] = "engine train_group probe"
    members = _probe_members(8, 3 * 128)
    calls: list = []
    instrument("PROBE", watch, calls)
    t0 = time.perf_counter()
    try:
        out = batched.train_group(members, torch_device())
        accs = [m["test_acc"] for m in out]
        say("PROBE", f"engine train_group (f=3, 8 members, 3 steps, synthetic data): ok in "
                     f"{time.perf_counter() - t0:.1f}s, test acc {min(accs):.2f}-{max(accs):.2f}")
        record("probe", test="train_group", ok=True, calls=calls)
    except Exception as exc:  # noqa: BLE001 -- the probe's finding
        say("PROBE", f"engine train_group raised {one_line(exc, 190)}")
        record("probe", test="train_group", ok=False, error=one_line(exc, 300), calls=calls)


def phase_probe() -> None:
    watch = Watch()
    for probe in (probe_feedback, lambda: probe_step(watch), lambda: probe_train_group(watch)):
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 -- next probe
            say("PROBE", f"{STEP[0]}: {one_line(exc)}")


# CONV ---------------------------------------------------------------------------------------------

def conv_layers():
    """(index, C_in, C_out, stride, padding, H, W) of the reference cnn's convolutions."""
    import torch
    from engine.train.models import build_model
    model = build_model(ARCH, (28, 56, 1), 10)
    x, out = torch.zeros(1, 1, 28, 56), []
    for i, layer in enumerate(model.layers[:-1]):
        c = layer[0]
        out.append((i, c.in_channels, c.out_channels, c.stride, c.padding, x.shape[2], x.shape[3]))
        x = layer(x)
    return out


def time_ms(fn, iters: int, warm: int) -> float:
    """Median milliseconds of fn(): CUDA events on CUDA, perf_counter on the CPU."""
    import torch
    for _ in range(warm):
        fn()
    sync()
    times = []
    for _ in range(iters):
        if is_cuda():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def phase_conv() -> None:
    import torch
    import torch.nn.functional as F
    cuda, dev = is_cuda(), torch_device()
    Ks = _env_list("CONV_K", "1,8,32" if cuda else "1,8")
    B = int(os.environ.get("CONV_BATCH", "128" if cuda else "8"))
    iters = int(os.environ.get("CONV_ITERS", "20" if cuda else "2"))
    flags = (False, True) if cuda else (None,)
    say("CONV", f"fwd+bwd, bf16 autocast, channels-last, batch {B}, median of {iters}; "
                f"ms {'cudnn.benchmark 0|1' if cuda else '(cpu: cudnn n/a)'}; "
                f"GB/s = (x + w + y bytes, once) / time")
    kind = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16)
    for i, cin, cout, stride, pad, H, W in conv_layers():
        for K in Ks:
            STEP[0] = f"conv L{i} K={K}"
            dt = torch.float32 if i == 0 else torch.bfloat16  # layer 0 reads normalised fp32
            cl = torch.channels_last
            xg = torch.randn(B, K * cin, H, W, device=dev, dtype=dt).to(memory_format=cl)
            xg.requires_grad_(i > 0)  # layer 0's input needs no gradient
            wg = torch.randn(K * cout, cin, 3, 3, device=dev).to(memory_format=cl)
            wg.requires_grad_(True)
            xs = [xg[:, k * cin:(k + 1) * cin].detach().clone().requires_grad_(i > 0)
                  for k in range(K)]
            ws = [wg[k * cout:(k + 1) * cout].detach().clone().requires_grad_(True)
                  for k in range(K)]

            def grouped_():
                with kind:
                    y = F.conv2d(xg, wg, None, stride, pad, 1, K)
                torch.autograd.grad(y, [xg, wg] if i > 0 else [wg], torch.ones_like(y))
                return y

            def separate():
                for x, w in zip(xs, ws):
                    with kind:
                        y = F.conv2d(x, w, None, stride, pad)
                    torch.autograd.grad(y, [x, w] if i > 0 else [w], torch.ones_like(y))

            y = grouped_()
            nbytes = (xg.numel() * xg.element_size() + wg.numel() * 2
                      + y.numel() * y.element_size())
            tg, ts = [], []
            for flag in flags:
                if flag is not None:
                    torch.backends.cudnn.benchmark = flag
                tg.append(time_ms(grouped_, iters, 3))
                ts.append(time_ms(separate, iters, 2) if K > 1 else tg[-1])
            ms = lambda t: "|".join(f"{v:.3f}" for v in t)  # noqa: E731
            gbs = "|".join(f"{nbytes / v / 1e6:.3g}" for v in tg)
            name = f"L{i} {cin}>{cout} s{stride[0]} {H}x{W} K={K}"
            if K == 1:
                say("CONV", f"{name}: {ms(tg)} ms {gbs} GB/s")
            else:
                say("CONV", f"{name}: grouped {ms(tg)} ms {gbs} GB/s; separate {ms(ts)} ms; "
                            f"separate/grouped {min(ts) / min(tg):.2f}x")
            record("conv", layer=i, K=K, grouped_ms=tg, separate_ms=ts, flags=list(flags),
                   gbs=[nbytes / v / 1e6 for v in tg])
            del xg, wg, xs, ws, y
    if cuda:
        torch.backends.cudnn.benchmark = False


# ALICE --------------------------------------------------------------------------------------------

def phase_alice() -> None:
    from engine import paths
    from engine.sweep.executors import BatchedExecutor, Context, Executor, SerialExecutor
    from engine.train.checkpoint import load_checkpoint
    key, dirs, alices, _ = sweep_inputs()
    n = records("data")[-1]["n_train"] if records("data") else None
    inherited = BatchedExecutor.pretrain is Executor.pretrain
    watch, calls = Watch(), []
    instrument("ALICE", watch, calls)
    accs = {}
    for name, cls in (("serial", SerialExecutor), ("batched", BatchedExecutor)):
        STEP[0] = f"{name} pretrain"
        root = SCRATCH / f"alice-{name}"
        shutil.rmtree(root, ignore_errors=True)
        ctx = Context(out=root, dataset_dirs=dirs, device=torch_device(),
                      log=lambda m: print(m, file=sys.stderr))
        snap, n_calls, t0 = watch.snap(), len(calls), time.perf_counter()
        try:
            # Serial: the first Alice pays the compile, the others show the warm time per Alice.
            parts = [alices[:1], alices[1:]] if name == "serial" else [alices]
            times = []
            for part in parts:
                if part:
                    t = time.perf_counter()
                    cls().pretrain(part, ctx)
                    sync()
                    times.append(time.perf_counter() - t)
            seconds = time.perf_counter() - t0
            accs[name] = [float(load_checkpoint(paths.alice_checkpoint(root, a.id))[2]["test_acc"])
                          for a in alices]
            w = watch.since(snap)
            stats = group_stats(calls[n_calls:])
            compile_s = sum(s.get("compile_s") or 0 for s in stats) if stats else None
            if name == "serial":
                warm = times[1] / (len(alices) - 1) if len(times) > 1 else None
                note = (f" (first {times[0]:.1f}s incl. compile, then {warm:.1f}s each)"
                        if warm is not None else " (incl. compile)")
            else:
                warm = (seconds - compile_s) / len(alices) if compile_s is not None else None
                note = (" (inherits Executor.pretrain: one at a time, serial graphs warm)"
                        if inherited else f" (compile {_f(compile_s, '.1f')}s)")
            say("ALICE", f"{name}: {len(alices)} Alices x {ALICE_EPOCHS} epoch(s), {n} samples: "
                         f"{seconds:.1f}s{note}; graphs {w['graphs']}, recompiles "
                         f"{w['recompiles']}; test acc {' '.join(f'{a:.4f}' for a in accs[name])}")
            record("alice", executor=name, seconds=seconds, warm_per_alice=warm,
                   n_alices=len(alices), n_train=n, epochs=ALICE_EPOCHS, test_acc=accs[name],
                   inherited=inherited, **w)
        except Exception as exc:  # noqa: BLE001 -- next executor
            say("ALICE", f"{name} pretrain raised {one_line(exc, 180)}")
            record("alice", executor=name, ok=False, error=one_line(exc, 300))
    if len(accs) == 2:
        diff = max(abs(a - b) for a, b in zip(accs["serial"], accs["batched"]))
        say("ALICE", f"max |test acc serial - batched| {diff:.4f}")
        record("alice", executor="compare", max_diff=diff)


# GROUP --------------------------------------------------------------------------------------------

def run_execute(tag: str, root: Path, specs, alices, dirs, executor: str, watch: Watch,
                max_group: int | None = None, serial_runs: list | None = None) -> dict:
    """execute() into a fresh `root` (the ALICE phase's Alices copied in); seconds of the Bob
    stage (Alices' pretrain or reuse timed apart), the per-call group lines and the rows."""
    from engine.sweep import executors
    from engine.sweep.driver import execute
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    reused = seed_alices(root)
    calls: list = []
    instrument(tag, watch, calls, serial_runs)
    alice_s = [0.0]
    cls = executors.EXECUTORS[executor]
    pretrain, own = cls.pretrain, "pretrain" in vars(cls)

    def timed_pretrain(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return pretrain(self, *a, **kw)
        finally:
            alice_s[0] = time.perf_counter() - t0

    cls.pretrain = timed_pretrain
    snap, t0 = watch.snap(), time.perf_counter()
    try:
        execute(root, specs, alices, dirs, executor=executor, device=torch_device(),
                max_group=max_group, stderr=open(os.devnull, "w"),
                log=lambda m: print(m, file=sys.stderr))
    finally:
        if own:
            cls.pretrain = pretrain
        else:
            del cls.pretrain
    sync()
    wall = time.perf_counter() - t0
    if alice_s[0] > 5 or not reused:
        say(tag, f"Alices {'reused' if reused else 'trained here'}: {alice_s[0]:.1f}s "
                 f"(not counted below)")
    df = results_table(root)
    return {"wall_s": wall, "bob_s": wall - alice_s[0], "alice_s": alice_s[0], "calls": calls,
            "rows": len(df), "acc": dict(zip(df["run_id"], df["test_acc"])),
            "dynamo": watch.since(snap)}


def phase_group() -> None:
    key, dirs, alices, mix = sweep_inputs()
    watch, serial_runs = Watch(), []
    STEP[0] = f"batched execute of {len(mix)} runs"
    say("GROUP", f"default cnn mix, seeds {','.join(map(str, SEEDS))}: {len(mix)} recorded "
                 f"({n_trained(mix)} trained), {EPOCHS} epoch(s), executor batched")
    r = run_execute("GROUP", SCRATCH / "group", mix, alices, dirs, "batched", watch,
                    serial_runs=serial_runs)
    stats = group_stats(r["calls"])
    compile_s = sum(s.get("compile_s") or 0 for s in stats)
    if serial_runs:
        say("GROUP", f"{len(serial_runs)} runs trained serially (not batchable on {DEVICE}): "
                     f"{sum(s['wall_s'] for s in serial_runs):.1f}s")
    say("GROUP", f"total: {r['rows']} recorded in {r['bob_s']:.1f}s = {rate(r['rows'], r['bob_s'])}"
                 f" incl. compile; excl. compile {compile_s:.1f}s: "
                 f"{rate(r['rows'], r['bob_s'] - compile_s) if stats else 'n/a (no stats)'}; "
                 f"dynamo graphs {r['dynamo']['graphs']} recompiles {r['dynamo']['recompiles']}")
    record("group", runs=len(mix), trained=n_trained(mix), serial_runs=serial_runs,
           compile_s=compile_s, **{k: v for k, v in r.items() if k != "acc"})


# RATE ---------------------------------------------------------------------------------------------

def paper_members() -> tuple[dict[int, int], int, int]:
    """Members per frozen depth of one (beta, seed) of the default cnn mix (computations, as the
    planner trains them), and its recorded and trained run counts."""
    from engine.sweep.expand import expand_sweep
    specs = expand_sweep([BETA], [ARCH], [0])
    per: dict[int, int] = {}
    for cid, s in {s.computation_id: s for s in specs}.items():
        per[frozen_of(s)] = per.get(frozen_of(s), 0) + 1
    return per, len(specs), n_trained(specs)


def phase_rate() -> None:
    per, recorded, trained = paper_members()
    units = PAPER_BETAS * PAPER_SEEDS
    steps = PAPER_N // 128 * PAPER_EPOCHS
    say("RATE", f"paper cnn mix: {PAPER_BETAS} betas x {PAPER_SEEDS} seeds x {recorded} = "
                f"{units * recorded} recorded ({units * trained} trained), {PAPER_N} samples, "
                f"{PAPER_EPOCHS} epochs = {steps} steps a group")
    say("RATE", f"time of group f = ms/step at the measured slots (K padded) x paper slots / "
                f"measured slots (linear: an upper bound, small groups underuse the GPU) "
                f"x {steps} steps")
    g = records("group")
    if not g:
        say("RATE", "no GROUP figures: nothing to extrapolate")
        return
    g = g[-1]
    stats = group_stats(g["calls"])
    n_meas = next((s.get("n") for s in stats if s.get("n")), None) or \
        (records("data")[-1]["n_train"] if records("data") else PAPER_N)
    total_gpu = total_run = 0.0
    missing = []
    for f in sorted(per):
        Kp = per[f] * units
        mine = [s for s in stats if s.get("frozen") == f and s.get("steps")]
        serial = [s for s in g.get("serial_runs", []) if s["frozen"] == f]
        calls = [c for c in g["calls"] if c["frozen"] == f and c["ok"]]
        timed = [s for s in mine if (s.get("gpu_ms_per_step") or s.get("host_ms_per_step"))]
        if mine and len(timed) == len(mine):
            K = sum(s["K"] for s in mine)
            slots = sum(s.get("K_padded") or s["K"] for s in mine)
            paper_slots = -(-Kp // 8) * 8 if slots > K or slots % 8 == 0 else Kp
            host = sum(s.get("host_ms_per_step") or 0 for s in mine)
            if all(s.get("gpu_ms_per_step") is not None for s in mine):
                # split groups run one after another: their step times add
                gpu = sum(s["gpu_ms_per_step"] for s in mine)
                src = f"gpu {gpu:.2f} host {host:.2f} ms/step at K={K}"
            else:  # no GPU timing (CPU): the host's step time is the compute time
                gpu = host
                src = f"host {host:.2f} ms/step at K={K} (no GPU timing)"
            t_gpu = gpu * paper_slots / slots * steps / 1e3
            t_run = max(host, gpu * paper_slots / slots) * steps / 1e3
            src += f" ({slots} slots; paper {paper_slots})"
        elif calls:  # no GROUP_STATS: the call's wall (compile and evaluation included)
            K = sum(c["K"] for c in calls)
            wall = sum(c["wall_s"] for c in calls)
            t_gpu = t_run = wall * Kp / K * PAPER_EPOCHS / EPOCHS * PAPER_N / n_meas
            src = f"call wall {wall:.1f}s at K={K} (no stats: incl. compile, upper bound)"
        elif serial:  # trained one run at a time (CPU conv tails)
            each = sum(s["wall_s"] for s in serial) / len(serial)
            t_gpu = t_run = each * Kp * PAPER_EPOCHS / EPOCHS * PAPER_N / n_meas
            src = f"serial {each:.2f}s/run x {Kp} runs"
        else:
            missing.append(f)
            say("RATE", f"f={f}: paper K {Kp}: not measured")
            continue
        total_gpu += t_gpu
        total_run += t_run
        say("RATE", f"f={f}: paper K {Kp}, {src} -> {t_gpu:.0f}s GPU-bound, {t_run:.0f}s as run")
    alice = [a for a in records("alice") if a.get("executor") in ("serial", "batched")
             and a.get("seconds")]
    alice_s = 0.0
    if alice:
        warm = [a for a in alice if a.get("warm_per_alice")]
        best = min(warm or alice, key=lambda a: a.get("warm_per_alice") or
                   a["seconds"] / a["n_alices"])
        each = best.get("warm_per_alice") or best["seconds"] / best["n_alices"]
        per_epoch = each / best["epochs"] * PAPER_N / (best["n_train"] or PAPER_N)
        alice_s = units * PAPER_EPOCHS * per_epoch
        say("RATE", f"Alices: {units} x {PAPER_EPOCHS} epochs x {per_epoch:.2f}s/epoch "
                    f"({best['executor']}, {'warm' if warm else 'incl. compile'}) = {alice_s:.0f}s")
    n = units * recorded
    part = f" (f={','.join(map(str, missing))} missing: partial)" if missing else ""
    say("RATE", f"Bob stage: {n} recorded in {total_gpu:.0f}s GPU-bound = {rate(n, total_gpu)}, "
                f"{total_run:.0f}s as run = {rate(n, total_run)}; with Alices "
                f"{rate(n, total_run + alice_s)}{part}; mlp half of the sweep not measured")
    record("rate", recorded=n, gpu_s=total_gpu, run_s=total_run, alice_s=alice_s,
           rate_gpu=per_hour(n, total_gpu), rate_run=per_hour(n, total_run),
           rate_with_alices=per_hour(n, total_run + alice_s), missing=missing)


# HEADS --------------------------------------------------------------------------------------------

def phase_heads() -> None:
    from engine.spec import BobSpec, n_layers
    key, dirs, alices, _ = sweep_inputs()
    L = n_layers(ARCH)
    watch = Watch()
    for K in HEADS:
        if left() < 15:
            say("HEADS", f"K={K}: skipped, {left():.0f}s left in the box")
            continue
        STEP[0] = f"head-only K={K}"
        specs = [BobSpec(alice_id=alices[i % len(alices)].id, dataset=key, arch=ARCH,
                         retrain_from=L, mode="finetune", seed=i, epochs=EPOCHS)
                 for i in range(K)]
        try:
            r = run_execute("HEADS", SCRATCH / f"heads-{K}", specs, alices, dirs, "batched",
                            watch, max_group=K)
        except Exception as exc:  # noqa: BLE001 -- next K
            say("HEADS", f"K={K} raised {one_line(exc, 180)}")
            continue
        stats = group_stats(r["calls"])
        compile_s = sum(s.get("compile_s") or 0 for s in stats)
        train_s = sum((s.get("steps") or 0) * max(s.get("gpu_ms_per_step") or 0,
                                                 s.get("host_ms_per_step") or 0) / 1e3
                      for s in stats) if stats else r["bob_s"] - compile_s
        fixed = max(0.0, r["bob_s"] - compile_s - train_s)  # features, evaluation, recording
        paper = fixed + train_s * PAPER_EPOCHS / EPOCHS
        say("HEADS", f"K={K} (hand-built BobSpecs: l={L} finetune, {len(alices)} Alices x seeds "
                     f"0..{K - 1}): {r['bob_s']:.1f}s incl. compile {compile_s:.1f}s = "
                     f"{rate(K, r['bob_s'])}; excl. compile {rate(K, r['bob_s'] - compile_s)}; "
                     f"at {PAPER_EPOCHS} epochs {rate(K, paper)}")
        record("heads", K=K, seconds=r["bob_s"], compile_s=compile_s, train_s=train_s,
               paper_s=paper, rate=per_hour(K, r["bob_s"] - compile_s),
               rate_paper=per_hour(K, paper), calls=r["calls"])


# SERIAL / ACC / naive -----------------------------------------------------------------------------

def serial_mix(key: str):
    from engine.spec import Training
    from engine.sweep.expand import expand_sweep
    t = Training(epochs=EPOCHS)
    return expand_sweep([BETA], [ARCH], SEEDS, layers=SERIAL_LAYERS, baselines=("random-frozen",),
                        datasets={BETA: key}, bob=t, alice=Training(epochs=ALICE_EPOCHS))


def phase_serial() -> None:
    key, dirs, alices, _ = sweep_inputs()
    specs = serial_mix(key)
    say("SERIAL", f"mix: l={','.join(map(str, SERIAL_LAYERS))} finetune/reinit/random-frozen, "
                  f"seeds {','.join(map(str, SEEDS))}: {len(specs)} recorded "
                  f"({n_trained(specs)} trained), {EPOCHS} epoch(s), whole split")
    watch, out = Watch(), {}
    for executor in ("serial", "batched"):
        STEP[0] = f"{executor} execute"
        try:
            r = run_execute("SERIAL", SCRATCH / f"mix-{executor}", specs, alices, dirs, executor,
                            watch)
        except Exception as exc:  # noqa: BLE001 -- the other executor still runs
            say("SERIAL", f"{executor} raised {one_line(exc, 180)}")
            continue
        out[executor] = r
        d = r["dynamo"]
        say("SERIAL", f"{executor}: {r['rows']} recorded in {r['bob_s']:.1f}s = "
                      f"{rate(r['rows'], r['bob_s'])} (incl. compile; graphs {d['graphs']}, "
                      f"recompiles {d['recompiles']})")
        record("serial", executor=executor, seconds=r["bob_s"], rows=r["rows"],
               rate=per_hour(r["rows"], r["bob_s"]), calls=r["calls"], acc=r["acc"], **d)
    if len(out) < 2:
        say("ACC", "needs both executors: skipped")
        return
    s, b = out["serial"], out["batched"]
    say("SERIAL", f"batched/serial {s['bob_s'] / b['bob_s']:.2f}x (whole execute, compile incl.)")
    by_id = {x.run_id: x for x in specs}
    diffs = sorted(((abs(s["acc"][k] - b["acc"][k]), k) for k in s["acc"] if k in b["acc"]),
                   reverse=True)
    if not diffs:
        say("ACC", "no common runs")
        return
    for d, k in diffs[:3]:
        x = by_id.get(k)
        what = f"l={x.retrain_from} {x.mode} seed {x.seed}" if x else k
        say("ACC", f"{what}: serial {s['acc'][k]:.4f} batched {b['acc'][k]:.4f} |diff| {d:.4f}")
    mean = sum(d for d, _ in diffs) / len(diffs)
    say("ACC", f"largest |test acc serial - batched| {diffs[0][0]:.4f}, mean {mean:.4f} over "
               f"{len(diffs)} runs (tolerance {ACC_TOL})")
    record("acc", max_diff=diffs[0][0], mean_diff=mean, n=len(diffs))


def phase_naive() -> None:
    """bench/naive_baseline.py: one run per frozen depth (its cost depends on nothing else: full
    forward, backward down to l), weighted by how many of one seed's default cnn mix (all 15:
    the naive loop trains duplicates too) have that depth; N_NAIVE samples, scaled to the split."""
    from engine import paths
    from engine.sweep.expand import expand_sweep
    key, dirs, alices, _ = sweep_inputs()
    n_data = records("data")[-1]["n_train"] if records("data") else PAPER_N
    n = int(os.environ.get("N_NAIVE", "") or (n_data if is_cuda() else min(n_data, 256)))
    alice = paths.alice_checkpoint(SCRATCH / "alice-serial", alices[0].id)
    if not alice.is_file():
        raise RuntimeError(f"no Alice for seed {SEEDS[0]} (the ALICE phase failed)")
    mix = expand_sweep([BETA], [ARCH], [SEEDS[0]], datasets={BETA: key})
    weight: dict[int, int] = {}
    first: dict[int, object] = {}
    for x in mix:
        weight[frozen_of(x)] = weight.get(frozen_of(x), 0) + 1
        first.setdefault(frozen_of(x), x)
    depths = sorted(first)
    runs = ",".join(f"{first[f].retrain_from}:{first[f].mode}" for f in depths)
    cmd = [sys.executable, str(Path(__file__).with_name("naive_baseline.py")), str(dirs[key]),
           str(alice), runs, "--epochs", str(EPOCHS), "--seed", str(SEEDS[0]), "--n", str(n),
           "--device", DEVICE, "--warmup-n", str(min(n, 256))]
    STEP[0] = "naive_baseline.py"
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=max(5, left() - 4))
        text, end = p.stdout, f"exit {p.returncode}"
    except subprocess.TimeoutExpired as exc:  # the runs done so far still give a rate
        text = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        end = f"stopped after {exc.timeout:.0f}s"
    rows = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
    if not rows:
        raise RuntimeError(f"naive_baseline.py {end}, no run finished")
    done = depths[:len(rows)]  # runs print in order
    secs = {f: r["seconds"] * n_data / n for f, r in zip(done, rows)}  # time taken ~ samples
    mix_s = sum(weight[f] * secs[f] for f in done)
    n_mix = sum(weight[f] for f in done)
    each = " ".join(f"{r['seconds']:.1f}" for r in rows)
    say("SERIAL", f"naive (bench/naive_baseline.py, eager fp32): l:mode {runs} x {n} samples: "
                  f"{each}s; {end}")
    say("SERIAL", f"naive mix (seed {SEEDS[0]}, {n_mix} runs = per depth "
                  f"{'/'.join(str(weight[f]) for f in done)} x its run"
                  f"{', scaled to ' + str(n_data) + ' samples' if n != n_data else ''}): "
                  f"{mix_s:.1f}s = {rate(n_mix, mix_s)}")
    record("naive", runs=n_mix, seconds=mix_s, n=n, n_data=n_data, rate=per_hour(n_mix, mix_s),
           accs=[r["test_acc"] for r in rows])


# SUMMARY ------------------------------------------------------------------------------------------

def _last(phase: str, **match) -> dict | None:
    rs = [r for r in records(phase) if all(r.get(k) == v for k, v in match.items())]
    return rs[-1] if rs else None


def phase_summary() -> None:
    S = lambda text: say("SUMMARY", text)  # noqa: E731
    status = records("status")
    bad = [f"{r['name']} {'timeout' if r['rc'] in (124, 137) else 'rc=' + str(r['rc'])}"
           f" ({r['s']}s)" for r in status if r["rc"]]
    total = sum(r["s"] for r in status)
    S(f"phases: {'all ok' if not bad else 'failed: ' + ', '.join(bad)}; {total}s so far")

    fb = _last("probe", test="feedback", variant="outputs fed back")
    if fb is not None:
        S("reduce-overhead feedback: " + (
            f"step {fb['step']} raised -> no CUDA graphs with outputs fed back; a static "
            "workspace updated in place is the way" if not fb["ok"] else
            f"5 steps ran (max |w - eager| {fb['diff']:.1e}) -> "
            + ("values match eager" if fb["diff"] < 1e-3 else "values WRONG: silent overwrite")))
    for test in ("step_fn", "train_group"):
        p = _last("probe", test=test)
        if p is not None:
            rec = p.get("recompiles", sum(c["recompiles"] for c in p.get("calls") or []))
            S(f"engine {test}: " + (f"ok, recompiles {rec}"
                                    if p["ok"] else f"FAILED ({p['error'][:120]}) -> fix first"))

    conv = records("conv")
    if conv:
        Kmax = max(c["K"] for c in conv)
        at = [c for c in conv if c["K"] == Kmax]
        if len(at[0]["flags"]) == 2:
            off, on = sum(c["grouped_ms"][0] for c in at), sum(c["grouped_ms"][1] for c in at)
            S(f"cudnn.benchmark: {'on' if on < off * 0.95 else 'either (within 5%)'} (grouped "
              f"conv {off / on:.2f}x faster with it at K={Kmax}, 4 layers summed)")
        g = sum(min(c["grouped_ms"]) for c in at)
        s = sum(min(c["separate_ms"]) for c in at)
        slow = [f"L{c['layer']}" for c in at if min(c["grouped_ms"]) > min(c["separate_ms"])]
        S(f"grouped conv at K={Kmax}: {s / g:.2f}x the speed of separate convs (best setting) -> "
          + ("batch conv tails" if s > g else "train conv tails one run at a time")
          + (f"; slower at {','.join(slow)}" if slow else ""))

    g = _last("group")
    if g is not None:
        stats = group_stats(g["calls"])
        if stats:
            comp = [s.get("compile_s") or 0 for s in stats]
            S(f"compile: {len(stats)} groups, {sum(comp):.0f}s total, max {max(comp):.0f}s -> "
              + ("amortised in a paper sweep" if sum(comp) < 300
                 else "cache graphs (inductor dir) and pad K"))
            uncached = [f"f={s.get('frozen')}" for s in stats if s.get("features") == "in-step"]
            S("features: " + (f"in-step for {','.join(uncached)} -> size the feature budget"
                              if uncached else "cached or inputs for every group"))
            both = [s for s in stats if s.get("gpu_ms_per_step") is not None
                    and s.get("host_ms_per_step") is not None]
            hb = [f"f={s.get('frozen')} ({s['host_ms_per_step']:.2f}>{s['gpu_ms_per_step']:.2f})"
                  for s in both if s["host_ms_per_step"] > s["gpu_ms_per_step"]]
            if both:
                S("host-bound groups (host > gpu ms/step): " + (
                    f"{', '.join(hb)} -> CUDA graphs (static workspace) would pay" if hb
                    else "none -> CUDA graphs would not help"))
            peaks = [s["peak_mem_gib"] for s in stats if s.get("peak_mem_gib") is not None]
            if peaks:
                S(f"peak memory {max(peaks):.1f} GiB in one group")
        else:
            S("GROUP_STATS absent: per-group compile, host/GPU ms and features not known")
        odd = [c["reason"] for c in g["calls"] if "stride" in c.get("reason", "")
               or "size" in c.get("reason", "")]
        S(f"recompiles in GROUP: {g['dynamo']['recompiles']}"
          + (f"; shape/stride guard failed: {odd[0][:70]}" if odd else ""))
    r = _last("rate")
    if r is not None and r.get("rate_run"):
        met = "met" if r["rate_run"] >= TARGET_RATE else "NOT met"
        S(f"rate {r['rate_run']:,.0f}/h (Bob, as run; GPU-bound {r['rate_gpu']:,.0f}/h; with "
          f"Alices {r['rate_with_alices']:,.0f}/h) vs target {TARGET_RATE:,}/h: {met}"
          + (" (partial)" if r["missing"] else ""))
    nv = _last("naive")
    if nv is not None and g is not None and nv.get("rate"):
        comp = g.get("compile_s") or 0
        b = per_hour(g["rows"], g["bob_s"] - comp)
        S(f"batched {b / nv['rate']:.1f}x naive (GROUP mix{' excl. compile' if comp else ''} vs "
          f"naive scaled) vs target {TARGET_NAIVE:g}x: "
          f"{'met' if b / nv['rate'] >= TARGET_NAIVE else 'NOT met'}")
    for h in records("heads"):
        if h.get("rate_paper"):
            S(f"head-only K={h['K']}: {h['rate_paper']:,.0f}/h at {PAPER_EPOCHS} epochs "
              f"(excl. compile) vs {TARGET_HEADS:,}/h: "
              f"{'met' if h['rate_paper'] >= TARGET_HEADS else 'NOT met'}")
    ss, sb = _last("serial", executor="serial"), _last("serial", executor="batched")
    a = _last("acc")
    if ss and sb:
        S(f"small mix batched {ss['seconds'] / sb['seconds']:.2f}x serial (compile incl.)"
          + (f"; acc max |diff| {a['max_diff']:.4f} -> "
             + ("equivalent" if a["max_diff"] <= ACC_TOL else "DIFFERS beyond seed noise")
             if a else ""))
    al_s, al_b = _last("alice", executor="serial"), _last("alice", executor="batched")
    if al_s and al_b and al_s.get("seconds") and al_b.get("seconds"):
        cmp_ = _last("alice", executor="compare") or {}
        S(f"Alices: batched {al_s['seconds'] / al_b['seconds']:.2f}x serial"
          + (" (inherited serial pretrain: batched Alices not in yet)" if al_b["inherited"] else "")
          + (f", acc max |diff| {cmp_['max_diff']:.4f}" if cmp_ else ""))


# Main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=PHASES)
    args = p.parse_args(argv)
    tag = TAGS[args.phase]
    signal.signal(signal.SIGTERM, on_term(tag))
    try:
        globals()[f"phase_{args.phase}"]()
    except Exception as exc:  # noqa: BLE001 -- one line, then the .sh runs the next phase
        say(tag, f"{args.phase} failed during {STEP[0]}: {one_line(exc)}")
        import traceback
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
