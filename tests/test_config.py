"""`engine sweep --config study.toml` and `engine sweep --from DIR`: the same spec, hence the same
run IDs, as the flags; flags given on the command line override; bad keys, types and values are
one line naming the file and line."""
from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.store import ResultsStore
from engine.sweep.config import resolve
from test_sweep import sweep_argv, tiny_pair  # noqa: F401 - tiny_pair is a fixture

QUICK = ["--layers", "3", "--modes", "finetune", "--baselines", "scratch"]


def run_ids(out) -> set[str]:
    return set(ResultsStore(out, read_only=True).table()["run_id"])


def spec_of(argv):
    from engine.cli_args import build_parser
    args = build_parser().parse_args(argv)
    return resolve(args, argv[1:])[0]


def study_file(tmp_path, pair, body: str):
    path = tmp_path / "study.toml"
    path.write_text(f'pair = "{pair}"\n' + body)
    return path


def test_config_and_from_give_the_flags_run_ids(tiny_pair, tmp_path, capsys):
    flags_out = tmp_path / "flags"
    assert main(sweep_argv(tiny_pair, flags_out, *QUICK)) == 0
    study = study_file(tmp_path, tiny_pair, """
betas = [0, 1]          # TOML numbers and arrays ...
seeds = "0"             # ... or the command line's strings
arch = ["mlp"]
depth = 2
width = 16
epochs = 1
alice-epochs = 1
n-train = 512
"n-test" = 256
device = "cpu"
precision = "fp32"
layers = [3]
modes = "finetune"
baselines = ["scratch"]
""")
    config_out = tmp_path / "config"
    argv = ["sweep", "--config", str(study), "--out", str(config_out)]
    assert spec_of(argv) == spec_of(sweep_argv(tiny_pair, flags_out, *QUICK))
    assert main(argv) == 0
    assert run_ids(config_out) == run_ids(flags_out) and len(run_ids(flags_out)) == 4

    # --from: the stored spec, --out defaulting to its directory; here a new directory.
    copy_out = tmp_path / "copy"
    assert main(["sweep", "--from", str(flags_out), "--out", str(copy_out)]) == 0
    assert run_ids(copy_out) == run_ids(flags_out)
    assert json.loads((copy_out / "sweep.json").read_text()) == \
        json.loads((flags_out / "sweep.json").read_text())
    # Extending a stored sweep: a flag on the command line overrides its field, the rest stays.
    capsys.readouterr()
    assert main(["sweep", "--from", str(flags_out), "--betas", "0,0.5,1"]) == 0
    assert "6 runs: 4 already done, 2 to run" in capsys.readouterr().err
    assert json.loads((flags_out / "sweep.json").read_text())["betas"] == [0.0, 0.5, 1.0]
    # The command line overrides a study file's value too.
    assert spec_of(argv + ["--epochs", "2"]).bob.epochs == 2


def test_from_keeps_hand_edited_fields_that_flags_do_not_set(tiny_pair, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    stored = spec_of(sweep_argv(tiny_pair, out, *QUICK))
    data = json.loads(stored.to_json())
    data["alice"]["lr"] = 0.05          # no flag sets Alice's learning rate
    data["bob"]["batch_size"] = 64
    (out / "sweep.json").write_text(json.dumps(data, indent=2))
    spec = spec_of(["sweep", "--from", str(out), "--seeds", "0,1", "--optimizer", "adam"])
    assert spec.alice.lr == 0.05 and spec.bob.batch_size == 64  # kept
    assert spec.seeds == (0, 1) and spec.bob.optimizer == spec.alice.optimizer == "adam"
    assert spec.replace(seeds=stored.seeds, bob=stored.bob.__class__(1, "adam", None, 64),
                        alice=stored.alice.__class__(1, "adam", 0.05, 128)) == \
        stored.replace(bob=stored.bob.__class__(1, "adam", None, 64),
                       alice=stored.alice.__class__(1, "adam", 0.05, 128))  # nothing else moved


@pytest.mark.parametrize("body, needles", [
    ("n_train = 512\n", ["line 2", "unknown key 'n_train'", "did you mean 'n-train'"]),
    ("\n\nbetass = [0]\n", ["line 4", "unknown key 'betass'", "'betas'"]),
    ("betas = [0, 2]\n", ["line 2", "--betas: 2 is outside [0, 1]"]),
    ("betas = [0]\nepochs = 0\n", ["line 3", "--epochs", "must be"]),
    ("betas = [0]\nepochs = true\n", ["line 3", "true/false is not a value of --epochs"]),
    ("betas = [0]\ndry-run = 1\n", ["line 3", "must be true or false"]),
    ("[betas]\nx = 1\n", ["line 2", "betas must be a value, not a table"]),
    ("config = \"other.toml\"\n", ["line 2", "unknown key 'config'"]),
    ("betas = [0\n", ["not valid TOML"]),
    ("betas = [0]\noptimizer = \"sgdd\"\n", ["line 3", "--optimizer", "invalid choice"]),
])
def test_bad_study_files_are_one_line(tiny_pair, tmp_path, capsys, body, needles):
    study = study_file(tmp_path, tiny_pair, body)
    assert main(["sweep", "--config", str(study), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("engine sweep: error: "), err
    assert str(study) in err or "not valid TOML" in err
    for n in needles:
        assert n in err, err


def test_bad_from_directories_are_one_line(tiny_pair, tmp_path, capsys):
    assert main(["sweep", "--from", str(tmp_path / "nothing")]) == 2
    assert "no stored sweep" in capsys.readouterr().err
    out = tmp_path / "o"
    out.mkdir()
    stored = json.loads(spec_of(sweep_argv(tiny_pair, out, *QUICK)).to_json())
    (out / "sweep.json").write_text(json.dumps({**stored, "bettas": [0]}, indent=2))
    assert main(["sweep", "--from", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'bettas'" in err and "line " in err and err.count("\n") == 1
    (out / "sweep.json").write_text(json.dumps({**stored, "betas": "0,1"}))
    assert main(["sweep", "--from", str(out), "--dry-run"]) == 2
    assert "betas must be a list" in capsys.readouterr().err
    assert main(["sweep", "--from", str(out), "--config", "x.toml"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
