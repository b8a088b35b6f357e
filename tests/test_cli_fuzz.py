"""Property-based test (issue 12): generated bad values for every flag of every command give exit
status 2, one line on stderr, no traceback, and write nothing."""
from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.cli import main

SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

# Generated text: no NUL (a real command line cannot carry one)
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
               max_size=12)


def _is_int(t: str) -> bool:
    try:
        int(t.strip())
        return True
    except ValueError:
        return False


def _is_float(t: str) -> bool:
    try:
        float(t.strip())
        return True
    except ValueError:
        return False


def bad_int(lo: int, hi: int | None = None):
    """Text that is not an integer in [lo, hi]."""
    out_of_range = st.integers(max_value=lo - 1)
    if hi is not None:
        out_of_range = out_of_range | st.integers(min_value=hi + 1)
    return (out_of_range.map(str) | TEXT.filter(lambda t: not _is_int(t))
            | st.floats(allow_nan=True).map(lambda f: f"{f}.5" if math.isfinite(f) else str(f)))


def bad_float(lo: float | None = None, hi: float | None = None, open_lo: bool = False):
    """Text that is not a finite number in [lo, hi] ((lo, hi] with open_lo)."""
    def ok(t):
        if not _is_float(t):
            return False
        v = float(t)
        return math.isfinite(v) and (lo is None or (v > lo if open_lo else v >= lo)) \
            and (hi is None or v <= hi)
    special = st.sampled_from(["nan", "inf", "-inf"])
    numbers = st.floats(allow_nan=False, allow_infinity=False).map(repr).filter(lambda t: not ok(t))
    return special | numbers | TEXT.filter(lambda t: not ok(t))


def bad_choice(valid):
    return TEXT.filter(lambda t: t not in valid)


def bad_list(kind: str):
    """Comma-separated lists with a bad item."""
    items = {"prob": ["2", "-0.5", "x", "nan", ""], "count": ["0", "-3", "x", "1.5", ""],
             "seed": ["-1", "x", ""], "unit": ["2", "-1", "x", "inf"], "sigma": ["-1", "x", "nan"],
             "alpha": ["2", "-2", "x", "nan", ""]}
    return st.lists(st.sampled_from(items[kind]), min_size=1, max_size=3).map(",".join)


def _npz(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, **{f"{s}_images": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
                      for s, n in (("train", 60), ("test", 30))},
             **{f"{s}_labels": np.arange(n) % 10 for s, n in (("train", 60), ("test", 30))})
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_world")
    pair = f"npz:{_npz(d / 'a.npz', 0)}:npz:{_npz(d / 'b.npz', 1)}"
    dataset = engine.build_data(pair, 0.5, out=d / "datasets")
    blocker = d / "a-file"
    blocker.write_text("x")
    return {"pair": pair, "dataset": str(dataset), "file": str(blocker)}


def run_bad(argv: list[str]) -> None:
    """main(argv) in an empty working directory: exit 2, one line, no traceback, nothing written."""
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        env = {k: os.environ.get(k) for k in ("ENGINE_OUT", "ENGINE_SWEEP_OUT")}
        os.chdir(tmp)
        os.environ["ENGINE_OUT"] = os.environ["ENGINE_SWEEP_OUT"] = str(Path(tmp) / "out")
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    status = main([a.replace("{tmp}", tmp) for a in argv])
                except SystemExit as exc:
                    status = exc.code
        finally:
            os.chdir(cwd)
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        text = err.getvalue()
        left = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*"))
    assert status == 2, (argv, status, text)
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text, (argv, text)
    assert left == [], (argv, left)


def _with(base: list[str], flag: str, value: str) -> list[str]:
    argv = list(base)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def _base(world, command: str) -> list[str]:
    return {
        "build-data": ["build-data", "--pair", world["pair"], "--beta", "0.5", "--n-train", "40",
                       "--n-test", "20", "--out", "{tmp}/out"],
        "inspect": ["inspect", world["dataset"]],
        "pretrain": ["pretrain", "--data", world["dataset"], "--arch", "mlp", "--epochs", "1",
                     "--out", "{tmp}/out"],
        "toy": ["toy", "--k", "2", "--n", "100", "--out", "{tmp}/out"],
        "manifold-sweep": ["manifold-sweep", "--n-target", "10", "--out", "{tmp}/out"],
        "results": ["results", "{tmp}/nothing"],
        "report": ["report", "{tmp}/nothing"],
        "case-study": ["case-study", "cats-dogs", "--data-root", "{tmp}/no-data", "--seeds", "0",
                       "--n-bob", "10", "--alice-epochs", "1", "--out", "{tmp}/out"],
    }[command]


FLAGS = {
    "build-data": {"--beta": bad_float(0, 1), "--seed": bad_int(0, 2**32 - 1),
                   "--n-train": bad_int(1), "--n-test": bad_int(1), "--image-size": bad_int(1, 4096),
                   "--block-shuffle": bad_int(1) | st.sampled_from(["3", "5", "8", "28", "56"]),
                   "--fit": bad_choice(["pad", "resize"]),
                   "--pair": TEXT.filter(lambda t: ":" not in t) | st.sampled_from(
                       ["mnist:nope", "a:b:c", ":", "npz:/nonexistent.npz:mnist"]),
                   "--out": st.sampled_from(["{file}", "{file}/sub"])},
    "inspect": {"--count": bad_int(1, 10_000), "--split": bad_choice(["train", "test"]),
                "dataset": st.sampled_from(["{tmp}/missing", "{file}", "{tmp}"])},
    "pretrain": {"--epochs": bad_int(1, 100_000), "--lr": bad_float(0, open_lo=True),
                 "--batch-size": bad_int(1, 1 << 24), "--depth": bad_int(1, 1000),
                 "--width": bad_int(1, 1 << 16), "--seed": bad_int(0, 2**32 - 1),
                 "--save-epochs": st.sampled_from(["x", "-1", "5", "1,,2", "0.5"]),
                 "--arch": st.sampled_from(["nope", "", "MLPX"]),
                 "--optimizer": bad_choice(["sgd", "adam"]),
                 "--device": bad_choice(["auto", "cpu", "cuda"]),
                 "--data": st.sampled_from(["{tmp}/missing", "{file}"]),
                 "--out": st.sampled_from(["{file}", "{file}/sub"])},
    "toy": {"--k": bad_int(1, 4096), "--n": bad_int(2, 10**8), "--seed": bad_int(0, 2**32 - 1),
            "--lam": bad_float(0, open_lo=True), "--hidden": bad_int(0, 65536),
            "--length": bad_float(0, open_lo=True), "--alphas": bad_list("alpha"),
            "--out": st.sampled_from(["{file}", "{file}/sub"])},
    "manifold-sweep": {"--overlaps": bad_list("prob"), "--n-target": bad_list("count"),
                       "--seeds": bad_list("seed"), "--d-latent": bad_int(1, 100_000),
                       "--target-latent": bad_int(1, 100_000), "--n-input": bad_int(1, 1_000_000),
                       "--classes": bad_int(2, 100_000), "--n-source": bad_int(1),
                       "--n-test": bad_int(1), "--epochs": bad_int(1, 100_000),
                       "--min-steps": bad_int(0, 10**9), "--alice-epochs": bad_int(1, 100_000),
                       "--lr": bad_float(0, open_lo=True), "--batch-size": bad_int(1),
                       "--depth": bad_int(1, 1000), "--width": bad_int(1, 1_000_000),
                       "--vary": bad_choice(["both", "features", "teacher"]),
                       "--nonlinearity": bad_choice(["tanh", "sign"]),
                       "--optimizer": bad_choice(["sgd", "adam"]),
                       "--device": bad_choice(["auto", "cpu", "cuda"]),
                       "--out": st.sampled_from(["{file}", "{file}/sub"])},
    "results": {"dir": st.sampled_from(["{tmp}/missing", "{file}"])},
    "report": {"dir": st.sampled_from(["{tmp}/missing", "{file}"])},
    "case-study": {"study": bad_choice(["cats-dogs"]), "--n-bob": bad_list("count"),
                   "--seeds": bad_list("seed"), "--noise": bad_list("prob"),
                   "--image-size": bad_choice(["32", "64"]),
                   "--arch": bad_choice(["cnn", "resnet18"]), "--alice-epochs": bad_int(1, 100_000),
                   "--passes": bad_int(1), "--min-epochs": bad_int(1, 100_000),
                   "--device": bad_choice(["auto", "cpu", "cuda"]),
                   "--executor": bad_choice(["batched", "serial"]),
                   "--out": st.sampled_from(["{file}", "{file}/sub"])},
}

ANALYZE = {"--max-samples": bad_int(1, 10**7), "--beta": bad_list("prob"),
           "--seed": bad_list("seed"), "--n-bob": bad_list("count"),
           "--mode": st.sampled_from(["nope", "x,finetune", ""]),
           "dir": st.sampled_from(["{tmp}/missing", "{file}"])}
ANALYZE_EXTRA = {"bound": {"--steps": bad_int(1, 10**6),
                           "--bound-mode": bad_choice(["fixed-all", "learned-A", "learned-all"])},
                 "barrier": {"--points": bad_int(2, 10_000)},
                 "criticality": {"--alphas": bad_list("unit"), "--sigmas": bad_list("sigma"),
                                 "--tolerance": bad_float(0, 1)},
                 "attribution": {"--method": bad_choice(["saliency", "grad_x_input",
                                                         "integrated_gradients"])},
                 "select-source": {"--n": bad_int(1), "--epochs": bad_int(1, 100_000)}}
KINDS = ("cka", "transferability", "bound", "barrier", "criticality", "attribution",
         "select-source")


def _cases():
    for command, flags in FLAGS.items():
        for flag in flags:
            yield pytest.param(command, flag, id=f"{command}{flag if flag.startswith('-') else ' ' + flag}")


def _fill(world, value: str) -> str:
    return value.replace("{file}", world["file"])


@pytest.mark.parametrize("command,flag", list(_cases()))
def test_bad_flag_values(world, command, flag):
    base = _base(world, command)

    @SETTINGS
    @given(FLAGS[command][flag])
    def check(value):
        value = _fill(world, value)
        if flag.startswith("-"):
            argv = _with(base, flag, value)
        else:  # the positional argument
            argv = [base[0], value, *base[2:]]
        run_bad(argv)

    check()


@pytest.mark.parametrize("kind", KINDS)
def test_bad_analyze_values(world, kind, tmp_path):
    sweep = tmp_path / "not-a-sweep"
    flags = {**ANALYZE, **ANALYZE_EXTRA.get(kind, {})}
    for flag, strategy in flags.items():
        @SETTINGS
        @given(strategy)
        def check(value):
            value = _fill(world, value)
            if flag == "dir":
                run_bad(["analyze", kind, value])
            else:
                run_bad(["analyze", kind, str(sweep), flag, value])
        check()


SWEEP = {"--betas": bad_list("prob"), "--layers": bad_list("count"), "--seeds": bad_list("seed"),
         "--arch": st.sampled_from(["nope", "mlp,", "cnn,x"]),
         "--modes": st.sampled_from(["nope", "finetune,x", ""]),
         "--baselines": st.sampled_from(["nope", "scratch,x"]), "--n-bob": bad_list("count"),
         "--epochs": bad_int(1, 100_000), "--alice-epochs": bad_int(1, 100_000),
         "--lr": bad_float(0, open_lo=True), "--batch-size": bad_int(1, 1 << 24),
         "--n-train": bad_int(1), "--n-test": bad_int(1),
         "--block-shuffle": st.sampled_from(["0", "x", "3", "-1", "16"]),
         "--device-budget-gb": bad_float(0, open_lo=True), "--max-group": bad_int(1),
         "--executor": bad_choice(["serial", "batched", "ray"]),
         "--out": st.sampled_from(["{file}", "{file}/sub"])}


@pytest.mark.parametrize("flag", list(SWEEP))
def test_bad_sweep_values(world, flag):
    base = ["sweep", "--pair", world["pair"], "--betas", "0", "--arch", "mlp", "--layers", "2",
            "--epochs", "1", "--alice-epochs", "1", "--n-train", "40", "--n-test", "20",
            "--device", "cpu", "--out", "{tmp}/out"]

    @SETTINGS
    @given(SWEEP[flag])
    def check(value):
        run_bad(_with(base, flag, _fill(world, value)))

    check()
