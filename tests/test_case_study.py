"""The real-image case study (engine.studies.case_study) on small generated data: Alice and Bob on
different task datasets through the results store, resuming after a kill, and the report."""
import json

import numpy as np
import pandas as pd
import pytest

from engine.data.tasks import build_task, make_task
from engine.errors import EngineError
from engine.spec import AliceSpec, BobSpec
from engine.store import ResultsStore
from engine.studies import case_study as cs
from engine.studies.case_study_claims import claims
from engine.studies.case_study_report import write_report
from test_tasks import write_jpeg_folder, write_npz

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture
def data_root(tmp_path):
    """cats_and_dogs_filtered/ (small JPEGs) and CIFAR10/cifar10_test.npz (random 32x32) under a
    data root, as in /work/shared/data."""
    root = tmp_path / "data"
    write_jpeg_folder(root / "cats_and_dogs_filtered", counts={"train": 10, "validation": 5})
    (root / "CIFAR10").mkdir(parents=True)
    write_npz(root / "CIFAR10" / "cifar10_test.npz", n=100)
    return root


def stored(out):
    return ResultsStore(out, read_only=True).table()


def test_tasks_of_the_study(data_root):
    bob, alices = cs.cats_dogs_tasks(data_root=data_root, noise=(0.5, 1.0))
    assert bob.labels == ("cat", "dog") and bob.source.startswith("folder:")
    names = [a.name for a in alices]
    assert names == ["cifar-cat-dog", "cifar-all", "cifar-animals", "cifar-vehicles",
                     "cifar-cat-dog-noise0.5", "cifar-cat-dog-noise1"]
    assert [a.rank for a in alices] == [4, 3, 2, 1, None, None]
    assert alices[0].task.source_classes == NAMES and alices[0].task.labels == ("cat", "dog")
    assert not {"cat", "dog"} & set(alices[2].task.labels)  # related classes without them
    assert cs.bob_epochs(100, 4000, 2) == 40 and cs.bob_epochs(2000, 4000, 2) == 2
    with pytest.raises(EngineError, match="no CIFAR-10"):
        cs.cats_dogs_tasks(data_root=data_root / "nowhere")


def test_alice_and_bob_on_different_datasets_through_the_store_and_resume(data_root, tmp_path,
                                                                           monkeypatch):
    """A tiny mlp Alice on a CIFAR-like task, Bob on the photo task, via the sweep's `execute`."""
    from engine.sweep import driver, executors
    out = tmp_path / "pair"
    a_task = make_task(f"npz:{data_root / 'CIFAR10' / 'cifar10_test.npz'}",
                       ["cat", "dog", "ship"], source_classes=NAMES)
    b_task = make_task(f"folder:{data_root / 'cats_and_dogs_filtered'}", ["cats", "dogs"])
    a_dir, b_dir = (build_task(t, out=out / "datasets") for t in (a_task, b_task))
    tiny = dict(arch="mlp", depth=2, width=8, epochs=1)
    alice = AliceSpec(dataset=a_dir.name, **tiny)
    specs = [BobSpec(alice_id=alice.id, dataset=b_dir.name, retrain_from=l, mode=m, **tiny)
             for l in (1, 2, 3) for m in ("finetune", "reinit")]
    specs.append(BobSpec(alice_id="", dataset=b_dir.name, retrain_from=1, mode="scratch", **tiny))
    dirs = {a_dir.name: a_dir, b_dir.name: b_dir}

    real_fit, calls = executors.fit, []

    def flaky_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(executors, "fit", flaky_fit)
    with pytest.raises(KeyboardInterrupt):
        driver.execute(out, specs, [alice], dirs, executor="serial", device="cpu")
    first = stored(out)
    assert 2 <= len(first) < len(specs)
    monkeypatch.setattr(executors, "fit", real_fit)
    counts = driver.execute(out, specs, [alice], dirs, executor="serial", device="cpu")
    assert counts["done_before"] == len(first) and counts["total"] == len(specs)
    df = stored(out)
    assert len(df) == len(specs) and df["run_id"].is_unique
    assert set(df["run_id"]) == {s.run_id for s in specs}
    assert (df["dataset"] == b_dir.name).all() and (df["chance"] == 0.5).all()
    assert (df["n_bob"] == 20).all()
    a_rows = df[df["alice_id"] != ""]
    assert (a_rows["alice_id"] == alice.id).all() and a_rows["alice_test_acc"].between(0, 1).all()
    # Alice trained on her own dataset with her three classes.
    from engine.train.checkpoint import load_checkpoint
    from engine import paths
    _, spec, _ = load_checkpoint(paths.alice_checkpoint(out, alice.id))
    assert spec["model"]["n_classes"] == 3
    assert set(df.loc[df["computed_by"] != "", "mode"]) <= {"scratch", "reinit"}
    assert driver.execute(out, specs, [alice], dirs, executor="serial", device="cpu")["ran"] == 0


def test_case_study_end_to_end_resumes_after_a_kill(data_root, tmp_path, monkeypatch, capsys):
    from engine.sweep import executors
    out = tmp_path / "study"
    options = dict(out=out, seeds=(0, 1), n_bobs=(8, None), noise=(0.5,), alice_epochs=1,
                   passes=8, min_epochs=1, executor="serial", device="cpu", data_root=data_root)
    real_fit, calls = executors.fit, []

    def flaky_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(executors, "fit", flaky_fit)
    with pytest.raises(KeyboardInterrupt):
        cs.run_case_study("cats-dogs", **options)
    killed = stored(out)
    assert 0 < len(killed)
    monkeypatch.setattr(executors, "fit", real_fit)
    report = cs.run_case_study("cats-dogs", **options)
    study = json.loads((out / "study.json").read_text())
    df = stored(out)
    # 2 seeds x 2 n_bob x (5 Alices x 5 depths x 2 modes + scratch)
    assert len(df) == len(study["run_ids"]) == 2 * 2 * (5 * 10 + 1) and df["run_id"].is_unique
    assert set(df["n_bob"]) == {8, 20} and len(set(df["alice_id"]) - {""}) == 10
    assert set(df.loc[df["n_bob"] == 8, "epochs"]) == {1}
    for name in ("summary.md", "accuracy.csv", "best_depth.csv", "gain.csv", "gain.png",
                 "best_depth.png", "acc_vs_depth_n8.png", "acc_vs_depth_n20.png", "report.html"):
        assert (report / name).is_file(), name
    from browser import assert_not_blank, render
    page = (report / "report.html").read_text()
    assert "cifar-vehicles" in page and page.count("<img") == 4 and "inconclusive" in page
    shown = render(report / "report.html", tmp_path / "browser")
    assert (shown.images, shown.loaded) == (4, 4)
    assert_not_blank(shown.screenshot)
    text = (report / "summary.md").read_text()
    assert "cifar-vehicles" in text and "| claim | here | verdict |" in text
    assert text.count("**supported**") + text.count("**contradicted**") + \
        text.count("**inconclusive**") == 5
    gain = pd.read_csv(report / "gain.csv")
    assert len(gain) == 5 * 2 and gain["seeds"].eq(2).all()
    from engine.run_status import status  # `engine status` on a case-study directory
    s = status(out)
    assert s["kind"] == "case-study" and s["spec"].startswith("case study cats-dogs: arch cnn")
    assert (s["running"], s["state"], s["runs_total"], s["runs_done"], s["runs_to_train"]) == \
        (False, "finished", len(study["run_ids"]), len(df), 0)
    assert s["alices_done"] == s["alices_total"] == 10 and s["datasets_built"] == 6
    # Re-running trains nothing and rewrites the same report.
    calls.clear()
    monkeypatch.setattr(executors, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    cs.run_case_study("cats-dogs", **options)
    assert not calls and len(stored(out)) == len(df)
    # The sub-command (wired into engine.cli): prints where the report is, last line its directory.
    import argparse
    parser = argparse.ArgumentParser()
    cs.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["case-study", "cats-dogs", "--out", str(out), "--report-only"])
    assert args.n_bob == "100,500,all" and args.seeds == "0,1" and args.image_size == 32
    capsys.readouterr()
    assert cs.handle(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(report) and "summary.md" in printed[-2]


def test_claim_verdicts_follow_the_data():
    study = {"tasks": {"near": {"rank": 3, "noise": 0.0}, "mid": {"rank": 2, "noise": 0.0},
                       "far": {"rank": 1, "noise": 0.0}, "noisy": {"rank": None, "noise": 0.5}}}

    def frames(gain_by_task, depth_by_task):
        g = pd.DataFrame([{"task": t, "n_bob": n, "gain": v + (0.1 if n == 500 else 0),
                           "gain_std": 0.5, "seeds": 3, "best_mode": "finetune", "best_depth": 1}
                          for t, v in gain_by_task.items() for n in (100, 500)])
        b = pd.DataFrame([{"task": t, "mode": m, "n_bob": n, "best_depth": d - (n == 500)}
                          for t, d in depth_by_task.items() for m in ("finetune", "reinit")
                          for n in (100, 500)])
        return g, b

    g, b = frames({"near": 10, "mid": 5, "far": 0, "noisy": 4}, {"near": 5, "mid": 4, "far": 2, "noisy": 3})
    verdicts = [c["verdict"] for c in claims(study, g, b)]
    assert verdicts == ["supported"] * 5
    g, b = frames({"near": -6, "mid": 0, "far": 5, "noisy": 3}, {"near": 1, "mid": 3, "far": 5, "noisy": 2})
    verdicts = [c["verdict"] for c in claims(study, g, b)]
    assert verdicts[:4] == ["contradicted"] * 4
    g, b = frames({"near": 0.1, "mid": 0.2, "far": 0.0, "noisy": 0.1}, {"near": 2, "mid": 2, "far": 2, "noisy": 2})
    g["seeds"] = 1
    g["gain_std"] = np.nan
    assert [c["verdict"] for c in claims(study, g, b)][:4] == ["inconclusive"] * 4


def test_bad_study_options_get_one_line_errors(data_root, tmp_path):
    kw = dict(out=tmp_path / "s", data_root=data_root)
    for args, msg in [(dict(study="dogs-cats"), "unknown case study"),
                      (dict(arch="mlp"), "--arch"), (dict(image_size=48), "--image-size"),
                      (dict(n_bobs=(5000,)), "exceeds the 20 training photos"),
                      (dict(noise=(0,)), "--noise")]:
        study = args.pop("study", "cats-dogs")
        with pytest.raises(EngineError, match=msg) as e:
            cs.run_case_study(study, **kw, **args)
        assert "\n" not in str(e.value)
    with pytest.raises(EngineError, match="no case study"):
        write_report(tmp_path / "nothing")
