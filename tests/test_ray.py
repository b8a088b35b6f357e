"""`engine sweep --executor ray` (engine.sweep.ray_executor) on real Ray processes, CPU only.

Every test runs its own Ray processes with a temporary RAY_TMPDIR (short, under /tmp: Ray's unix
sockets must fit 107 characters) and non-default ports, and checks that none of them is left
when it ends (`ray_tmp`): a process is ours when its command line or environment names that
directory, or when it descends from one that does. Processes are stopped by their ids only.

- a local instance gives the serial executor's run IDs and metrics (on a CPU its tasks train as
  the serial executor does, on one torch thread where the reference may use more: compared to
  float32 reassociation, test accuracy to one test sample, as tests/test_batched);
- a two-node cluster (a head and a second `ray start`, each with one CPU and a resource of its
  own) runs units on both nodes; the second node runs in a mount namespace in which pytest's
  temporary directories (sources, datasets, the sweep's output) are an empty tmpfs, so its
  workers could not have read or written any file of the sweep;
- a worker process killed mid-task is retried, and every run is stored exactly once;
- a driver stopped with Ctrl-C (SIGINT), then one killed (SIGKILL), keeps the runs it recorded,
  leaves no Ray process, and the next run resumes without duplicates.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import engine.sweep.executors as executors  # noqa: E402
from engine import paths  # noqa: E402
from engine.cli import main  # noqa: E402
from engine.train.checkpoint import load_checkpoint  # noqa: E402
from engine.spec import Training  # noqa: E402
from engine.store import ResultsStore  # noqa: E402
from engine.sweep.expand import expand_sweep  # noqa: E402
from test_sweep import TINY, sweep_argv, tiny_pair  # noqa: E402,F401 - tiny_pair is a fixture

RAY = str(Path(sys.executable).with_name("ray"))
N_TEST = 256  # sweep_argv's --n-test
LOG = "results/_runs.jsonl"
# Ray's per-node agents outlive a raylet that died with a killed driver by up to 60 s: before they
# exit they report its death to the GCS, which died too, with a 60 s timeout (Ray 2.60).
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


# Our Ray processes -------------------------------------------------------------------------------

def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line + environment) of every readable process."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            text = (p / "cmdline").read_bytes() + b"\0" + (p / "environ").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        out[int(p.name)] = (ppid, text.replace(b"\0", b" ").decode(errors="replace"))
    return out


def ray_processes(root: str) -> list[int]:
    """Live processes that name `root` in their command line or environment, and their
    descendants (workers rename themselves "ray::...")."""
    procs = _procs()
    ours = {pid for pid, (_, text) in procs.items() if root in text and pid != os.getpid()}
    grown = True
    while grown:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours - {os.getpid()}
        ours |= more
        grown = bool(more)
    return sorted(pid for pid in ours if Path(f"/proc/{pid}").exists()
                  and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3])


def wait_gone(root: str, seconds: float, but: tuple[str, ...] = ()) -> list[str]:
    """Processes of `root` still alive after up to `seconds` ("pid command line"), but for
    those whose command line starts with one of `but`."""
    deadline = time.monotonic() + seconds
    while True:
        procs = _procs()
        left = [f"{pid} {procs.get(pid, (0, ''))[1][:120]}" for pid in ray_processes(root)]
        left = [p for p in left if not p.split(" ", 1)[1].startswith(but)] if but else left
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def kill(processes) -> None:
    """SIGKILL `processes` (as `wait_gone` lists them)."""
    for pid in (int(str(p).split()[0]) for p in processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def ray_tmp(monkeypatch):
    """A Ray temp dir of this test's own (RAY_TMPDIR); asserts no process of it is left."""
    assert not ray.is_initialized()
    root = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", root)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    try:
        yield root
    finally:
        if ray.is_initialized():
            ray.shutdown()
        left = wait_gone(root, 30)
        kill(left)
        shutil.rmtree(root, ignore_errors=True)
    assert not left, f"Ray processes left behind: {left}"


def busy_workers(root: str, seconds: float) -> list[int]:
    """Workers of `root` still running a sweep's task after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        procs = _procs()
        busy = [pid for pid in ray_processes(root)
                if procs.get(pid, (0, ""))[1].startswith(("ray::_unit_task", "ray::_alice_task"))]
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.25)


def stop_cluster(root: str) -> None:
    """What `ray stop` does, for this test's processes only: SIGTERM, then SIGKILL (raylet and
    GCS take seconds more to drain; the cluster's results are in)."""
    for pid in ray_processes(root):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    kill(wait_gone(root, 2))
    assert not wait_gone(root, 10)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# Sweeps ------------------------------------------------------------------------------------------

def stored(out):
    return ResultsStore(out, read_only=True).table()


@pytest.fixture(scope="module")
def serial_ref(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "sweep"
    assert main(sweep_argv(tiny_pair, out, "--executor", "serial")) == 0
    return stored(out)


def assert_same(df, ref) -> None:
    """`df` (a Ray sweep) holds `ref`'s runs (a serial sweep) with the same metrics."""
    a, b = df.set_index("run_id").sort_index(), ref.set_index("run_id").sort_index()
    assert df["run_id"].is_unique and list(a.index) == list(b.index)
    assert (a["executor"] == "ray").all()
    for col in ("alice_id", "dataset", "mode", "retrain_from", "n_layers", "n_bob", "computed_by"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("train_loss", "train_acc", "test_loss"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-4, atol=1e-4, err_msg=col)
    assert ((a["test_acc"] - b["test_acc"]).abs() <= 1 / N_TEST + 1e-9).all()
    np.testing.assert_allclose(a["alice_test_acc"], b["alice_test_acc"], atol=1 / N_TEST + 1e-9)


def expected_ids(df, seeds: list[int], epochs: int) -> set[str]:
    """The run IDs of sweep_argv's sweep (betas 0 and 1) with `seeds` and Bob's `epochs`."""
    keys = dict(zip([0.0, 1.0], sorted(df["dataset"].unique())))  # keys name their beta
    specs = expand_sweep([0, 1], ["mlp"], seeds, datasets=keys, bob=Training(epochs=epochs),
                         alice=Training(epochs=1), **TINY)
    return {s.run_id for s in specs}


@pytest.fixture
def keep_executor(monkeypatch):
    """The RayExecutor instances the driver makes (their `placements`)."""
    made = []
    real = executors.EXECUTORS["ray"]
    monkeypatch.setitem(executors.EXECUTORS, "ray",
                        lambda **kw: made.append(real(**kw)) or made[-1])
    return made


def test_local_instance_matches_serial(tiny_pair, serial_ref, ray_tmp, keep_executor, tmp_path,
                                       capsys):
    out = tmp_path / "sweep"
    assert main(sweep_argv(tiny_pair, out, "--executor", "ray")) == 0
    err = capsys.readouterr().err
    assert "Ray: started a local instance" in err and not ray.is_initialized()
    df = stored(out)
    assert_same(df, serial_ref)
    [executor] = keep_executor
    trained = df.loc[df["computed_by"] == "", "run_id"]
    assert set(executor.placements) == set(trained)
    assert os.getpid() not in {w["pid"] for w in executor.placements.values()}  # ran in workers
    rows = df.set_index("run_id")
    assert all(rows.loc[r, "device"] == w["device"] for r, w in executor.placements.items())
    # The driver wrote the Alice checkpoints: a second run reuses everything, starting no Ray.
    assert main(sweep_argv(tiny_pair, out, "--executor", "ray")) == 0
    err = capsys.readouterr().err
    assert "18 runs: 18 already done, 0 to run" in err and "Ray:" not in err


def test_alices_of_one_shape_train_in_one_task(tiny_pair, serial_ref, ray_tmp, tmp_path,
                                               monkeypatch):
    """Where tasks train batched (GPUs; here forced), the sweep's two Alices (one per beta)
    train together in one task, and the driver writes both Alices' checkpoints from it."""
    made = []
    real = executors.EXECUTORS["ray"]
    monkeypatch.setitem(executors.EXECUTORS, "ray",
                        lambda **kw: made.append(real(batched=True, **kw)) or made[-1])
    out = tmp_path / "sweep"
    assert main(sweep_argv(tiny_pair, out, "--executor", "ray")) == 0
    [executor] = made
    alices = {k: w for k, w in executor.tasks.items() if k.startswith("alice ")}
    assert len(alices) == 2
    assert len({(w["pid"], w["started"]) for w in alices.values()}) == 1  # one task
    df = stored(out).set_index("run_id").sort_index()
    ref = serial_ref.set_index("run_id").sort_index()
    assert list(df.index) == list(ref.index)
    np.testing.assert_allclose(df["alice_test_acc"], ref["alice_test_acc"],
                               atol=2 / N_TEST + 1e-9)
    for alice_id in set(df["alice_id"]) - {""}:
        load_checkpoint(paths.alice_checkpoint(out, alice_id), require_digest=True)


def _hide_command(hidden: Path) -> list[str] | None:
    """A command prefix that runs its command with `hidden` as an empty tmpfs (a mount namespace
    of its own), or None where this machine does not allow one."""
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs none '{hidden}' && "
                                f"test -z \"$(ls -A '{hidden}')\""], capture_output=True)
        if probe.returncode == 0:
            return [*prefix, "sh", "-c", f"mount -t tmpfs none '{hidden}' && exec \"$@\"", "sh"]
    return None


# The two-node test's driver, in a process of its own (a process that used another Ray session
# before fails to hand objects to a second node: OwnerDiedError, Ray 2.60). Unit tasks alternate
# between the nodes by a resource only that node has; Alices go anywhere. Writes where each run
# ran, where each task was sent, and the cluster's nodes to argv[1]; argv[2:] is the sweep.
CLUSTER_DRIVER = """
import json, sys
import ray
import engine.sweep.executors as executors
from engine.cli import main
from engine.sweep.ray_executor import RayExecutor
made, steered, resources = [], {}, RayExecutor._resources

def steer(self, task):
    options = resources(self, task)
    if task.startswith("unit "):
        steered[task] = where = ("head", "other")[len(steered) % 2]
        options["resources"] = {where: 0.01}
    return options

RayExecutor._resources = steer
make = executors.EXECUTORS["ray"]
executors.EXECUTORS["ray"] = lambda **kw: made.append(make(**kw)) or made[-1]
status = main(sys.argv[2:])
assert not ray.is_initialized()  # the driver left the cluster
ray.init(address=sys.argv[sys.argv.index("--ray-address") + 1])
nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
ray.shutdown()
with open(sys.argv[1], "w") as f:
    json.dump({"placements": made[0].placements, "steered": steered, "nodes": nodes}, f)
sys.exit(status)
"""


def test_two_node_cluster_shares_no_files(tiny_pair, serial_ref, ray_tmp, tmp_path,
                                          tmp_path_factory):
    hidden = tmp_path_factory.getbasetemp()  # sources, datasets, the sweep's output
    hide = _hide_command(hidden)
    if hide is None:
        pytest.skip("no mount namespace here (unshare --mount) to hide the output from a node")
    port, *node_ports = free_ports(13)
    common = ["--disable-usage-stats", "--num-cpus", "1"]
    ports = lambda p: ["--node-manager-port", p[0], "--object-manager-port", p[1],  # noqa: E731
                       "--metrics-export-port", p[2], "--dashboard-agent-listen-port", p[3],
                       "--dashboard-agent-grpc-port", p[4], "--runtime-env-agent-port", p[5]]
    head = [RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
            "--temp-dir", f"{ray_tmp}/head", "--resources", json.dumps({"head": 1}), *common,
            *ports(list(map(str, node_ports)))]
    node_cwd = Path(ray_tmp) / "node-cwd"
    node_cwd.mkdir()
    node = [*hide, RAY, "start", "--address", f"127.0.0.1:{port}", "--temp-dir",
            f"{ray_tmp}/node", "--resources", json.dumps({"other": 1}), *common,
            *ports(list(map(str, node_ports[6:])))]
    out, report = tmp_path / "sweep", tmp_path / "placements.json"
    driver = [sys.executable, "-c", CLUSTER_DRIVER, str(report),
              *sweep_argv(tiny_pair, out, "--executor", "ray", "--ray-address",
                          f"127.0.0.1:{port}")]
    # Token authentication, as between machines: every process is given the cluster's token.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    try:
        for cmd, cwd in ((head, None), (node, node_cwd), (driver, None)):
            done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=180)
            assert done.returncode == 0, done.stderr[-3000:]
        # Ctrl-C stops this sweep's tasks on the cluster, which stays up.
        stopped = tmp_path / "stopped"
        argv = sweep_argv(tiny_pair, stopped, "--executor", "ray", "--ray-address",
                          f"127.0.0.1:{port}", "--seeds", "0,1", "--epochs", "200")
        assert _stopped_sweep(argv, stopped, signal.SIGINT, 1, env=env) == 130
        assert not busy_workers(ray_tmp, 15)
        assert any("raylet" in p for p in wait_gone(ray_tmp, 0))
    finally:
        stop_cluster(ray_tmp)
    df = stored(out)
    assert_same(df, serial_ref)
    got = json.loads(report.read_text())
    nodes, placements, steered = got["nodes"], got["placements"], got["steered"]
    assert len(nodes) == 2 and set(steered.values()) == {"head", "other"}
    assert set(placements) == set(df.loc[df["computed_by"] == "", "run_id"])
    for run_id, where in placements.items():  # each run ran on the node its task was sent to
        assert steered[where["task"]] in nodes[where["node_id"]], run_id
    assert {w["node_id"] for w in placements.values()} == set(nodes)


def _kill_first_unit_task(root: str, killed: list, stop: threading.Event) -> None:
    """SIGKILL the first worker seen running a unit task of our Ray session."""
    while not stop.is_set() and not killed:
        for pid, (ppid, text) in _procs().items():
            if text.startswith("ray::_unit_task") and pid in ray_processes(root):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.02)


def test_worker_killed_mid_task_is_retried(tiny_pair, ray_tmp, keep_executor, tmp_path):
    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_pair, out, "--executor", "ray", "--epochs", "30")
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_first_unit_task, args=(ray_tmp, killed, stop))
    killer.start()
    try:
        assert main(argv) == 0
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1  # a worker died while running a unit: its task ran again
    df = stored(out)
    assert len(df) == 18 and df["run_id"].is_unique
    assert set(df["run_id"]) == expected_ids(df, seeds=[0], epochs=30)
    [executor] = keep_executor
    assert killed[0] not in {w["pid"] for w in executor.placements.values()}


def _rows(out: Path) -> int:
    log = out / LOG
    return len(log.read_bytes().splitlines()) if log.is_file() else 0


def _stopped_sweep(argv: list[str], out: Path, sig: int, after_rows: int,
                   env: dict | None = None) -> int:
    """Run the sweep in a process of its own; send it `sig` once `after_rows` rows are stored.
    Returns its exit status."""
    code = "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"
    err = out.parent / f"stderr-{sig}.txt"
    with open(err, "w") as f:
        # SIGINT as a terminal gives it: a shell that starts jobs in the background without job
        # control starts them ignoring it, and Python then never raises KeyboardInterrupt.
        proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.DEVNULL,
                                stderr=f, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while _rows(out) < after_rows and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the sweep ended before it was stopped: {err.read_text()}"
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_stopped_driver_resumes_without_duplicates(tiny_pair, ray_tmp, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_pair, out, "--executor", "ray", "--seeds", "0,1", "--epochs", "200")
    total = 36
    assert _stopped_sweep(argv, out, signal.SIGINT, 1) == 130  # Ctrl-C
    after_int = _rows(out)
    assert 0 < after_int < total
    assert not wait_gone(ray_tmp, 30)  # the local instance and its tasks stopped
    assert _stopped_sweep(argv, out, signal.SIGKILL, after_int + 1) == -signal.SIGKILL
    after_kill = _rows(out)
    assert after_int < after_kill < total
    # Ray's processes share the killed driver's fate; its agents would follow within 60 s (see
    # AGENTS), which this test does not wait for.
    assert not wait_gone(ray_tmp, 30, but=AGENTS)
    kill(wait_gone(ray_tmp, 0))
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"{total} runs: {after_kill} already done" in err
    df = stored(out)
    assert len(df) == total and df["run_id"].is_unique
    assert set(df["run_id"]) == expected_ids(df, seeds=[0, 1], epochs=200)


# Options -----------------------------------------------------------------------------------------

def test_without_ray_one_line_says_how_to_install(tiny_pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    assert main(sweep_argv(tiny_pair, tmp_path / "sweep", "--executor", "ray")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'engine-transfer[ray]'" in err[0]


@pytest.mark.parametrize("flags, message", [
    (["--executor", "ray", "--ray-address", "nohost"], "--ray-address must be"),
    (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    (["--executor", "ray", "--cpus-per-unit", "-1"], "--cpus-per-unit must be"),
    (["--executor", "ray", "--gpus-per-unit", "1.5"], "--gpus-per-unit must be"),
    (["--executor", "ray", "--cpus-per-unit", "0"], "must not both be 0"),
    (["--executor", "ray", "--max-retries", "-1"], "--max-retries must be"),
])
def test_bad_ray_flags_one_line(tiny_pair, tmp_path, capsys, flags, message):
    assert main(sweep_argv(tiny_pair, tmp_path / "sweep", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "sweep").exists()


def test_no_cluster_at_address_one_line(tiny_pair, tmp_path, capsys):
    [port] = free_ports(1)
    start = time.monotonic()
    assert main(sweep_argv(tiny_pair, tmp_path / "sweep", "--executor", "ray", "--ray-address",
                           f"127.0.0.1:{port}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err[-1] and "ray start --head" in err[-1]
    assert time.monotonic() - start < 60 and not ray.is_initialized()


def test_task_no_node_can_hold_is_one_line(tiny_pair, ray_tmp, tmp_path, capsys):
    assert main(sweep_argv(tiny_pair, tmp_path / "sweep", "--executor", "ray",
                           "--gpus-per-unit", "1")) == 2  # this instance has no GPU
    err = capsys.readouterr().err.strip().splitlines()
    assert "no node of the Ray cluster has the 1 CPUs and 1 GPUs" in err[-1]
    assert not ray.is_initialized()


def test_ray_options_do_not_change_run_ids(tiny_pair, tmp_path, capsys):
    from engine.sweep.spec import SweepSpec
    base = SweepSpec(pair="mnist:svhn", betas=(0.5,), archs=("mlp",))
    ray_spec = base.replace(executor="ray", ray_address="10.0.0.1:6379", cpus_per_unit=0.5,
                            gpus_per_unit=0.25, max_retries=0)
    from engine.sweep.plan import expand
    assert [s.run_id for s in expand(base)] == [s.run_id for s in expand(ray_spec)]
    assert SweepSpec.from_dict(json.loads(ray_spec.to_json())) == ray_spec
