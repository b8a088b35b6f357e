"""Gaussian feature-correlation model (`engine toy`): closed forms against simulation, symmetries,
valid ranges, and the CLI's files."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from engine.cli import main
from engine.errors import EngineError
from engine.studies.toy import (COLUMNS, SCENARIOS, alice_weights, bob_accuracy, components, covariance,
                        ridge, s1_rho, s1_weights, sample, simulate, train_linear)
from engine.studies.toy.model import correlation, group_vectors
from engine.studies.toy.sim import agreement, retrained

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALPHAS = (-1.0, -0.8, -0.3, 0.0, 0.2, 0.6, 1.0)


def within_4se(simulated: float, p: float, n: int) -> bool:
    """|simulated - p| within 4 binomial standard errors; p(1-p) floored at 1/n near p = 0 or 1."""
    return abs(simulated - p) <= 4 * math.sqrt(max(p * (1 - p), 1 / n) / n)


@pytest.mark.parametrize("alpha", [-0.7, 0.0, 0.4, 0.9])
def test_two_feature_weights_match_least_squares(alpha):
    lam, n = 0.5, 50_000
    x, y_a, _ = sample("S1", 1, alpha, n, np.random.default_rng(1))
    w = ridge(x, y_a, lam)
    expected = np.array(s1_weights(alpha, lam))
    assert np.allclose(w / np.linalg.norm(w), expected / np.linalg.norm(expected), atol=0.02)


@pytest.mark.parametrize("alpha", [-1.0, -0.4, 0.0, 0.5, 1.0])
def test_s1_block_formula_is_the_ridge_solution(alpha):
    k, lam = 3, 0.7
    sigma = covariance("S1", k, alpha)
    u, v = group_vectors(k)
    w = np.linalg.solve(sigma + lam * np.eye(2 * k), sigma @ u)
    assert np.allclose(alice_weights("S1", k, alpha, lam), w / np.linalg.norm(w), atol=1e-12)
    assert math.isclose(s1_rho(alpha, lam), correlation(sigma, w, v), abs_tol=1e-12)


def test_sgd_trained_network_reaches_the_ridge_solution():
    x, y_a, _ = sample("S2", 3, 0.6, 5000, np.random.default_rng(2))
    assert np.allclose(train_linear(x, y_a, 0.3), ridge(x, y_a, 0.3), atol=1e-8)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_bob_accuracy_closed_form_matches_simulation(scenario):
    k, lam, n = 3, 1.0, 20_000
    rng = np.random.default_rng(3)
    for alpha in ALPHAS:
        w = alice_weights(scenario, k, alpha, lam)
        as_is, retrain = bob_accuracy(scenario, k, alpha, lam)
        x_train, _, y_train = sample(scenario, k, alpha, n, rng)
        x_test, _, y_test = sample(scenario, k, alpha, n, rng)
        got_as_is = agreement(x_test @ w, y_test)
        got_retrain = retrained((x_train @ w)[:, None], y_train, (x_test @ w)[:, None], y_test)
        assert within_4se(got_as_is, as_is, n), (alpha, got_as_is, as_is)
        assert within_4se(got_retrain, retrain, n), (alpha, got_retrain, retrain)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_simulate_end_to_end_near_closed_form(scenario):
    k, lam, n = 2, 1.0, 10_000
    for alpha in (-0.6, 0.0, 0.5):
        sim = simulate(scenario, k, alpha, n, lam, seed=0)
        as_is, retrain = bob_accuracy(scenario, k, alpha, lam)
        # trained weights add an estimation error on top of the test set's binomial one
        assert abs(sim.as_is - as_is) < 0.03 and abs(sim.retrained - retrain) < 0.03
        own, other = components(alice_weights(scenario, k, alpha, lam))
        assert abs(sim.own - own) < 0.03 and abs(sim.other - other) < 0.03


@pytest.mark.parametrize("k", [1, 4])
def test_alpha_zero_is_chance(k):
    for scenario in SCENARIOS:
        assert bob_accuracy(scenario, k, 0.0, 1.0) == (0.5, 0.5)
        got = simulate(scenario, k, 0.0, 4000, 1.0).as_is
        assert within_4se(got, 0.5, 4000)


@pytest.mark.parametrize("lam", [0.1, 1.0])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sign_of_alpha(scenario, lam):
    k = 3
    for alpha in np.linspace(0.05, 1, 20):
        as_is, retrain = bob_accuracy(scenario, k, alpha, lam)
        neg_as_is, neg_retrain = bob_accuracy(scenario, k, -alpha, lam)
        assert retrain >= as_is - 1e-12 and neg_retrain >= neg_as_is
        assert neg_as_is < 0.5 < as_is
        assert math.isclose(neg_retrain, retrain, abs_tol=1e-12)  # retrained: symmetric in alpha
        assert math.isclose(neg_as_is, 1 - as_is, abs_tol=1e-12)


@pytest.mark.parametrize("lam", [0.1, 1.0])
@pytest.mark.parametrize("k", [1, 4])
def test_accuracy_grows_with_alpha(k, lam):
    alphas = np.linspace(0, 1, 21)
    for scenario in SCENARIOS:
        acc = np.array([bob_accuracy(scenario, k, a, lam) for a in alphas])
        assert (np.diff(acc, axis=0) > 0).all(), scenario


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_covariances_are_psd_where_allowed(scenario, k):
    for alpha in np.linspace(-1, 1, 41):
        sigma = covariance(scenario, k, alpha)
        assert np.allclose(sigma, sigma.T) and np.allclose(np.diag(sigma), 1.0)
        assert np.linalg.eigvalsh(sigma).min() >= -1e-10


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_invalid_arguments_raise(scenario):
    for alpha in (1.01, -1.5, float("nan")):
        with pytest.raises(EngineError, match="alpha"):
            covariance(scenario, 2, alpha)
    with pytest.raises(EngineError, match="k must be"):
        covariance(scenario, 0, 0.5)
    with pytest.raises(EngineError, match="lam must be"):
        bob_accuracy(scenario, 2, 0.5, 0.0)


def test_cli_writes_figures_and_csv(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["toy", "--k", "2", "--n", "2000", "--alphas=-0.5,0,0.5,1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    for name in ("toy_weights.png", "toy_accuracy.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    with open(out / "toy.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS == ("scenario", "alpha", "protocol", "analytic_acc",
                                         "simulated_acc")
    body = [dict(zip(COLUMNS, r)) for r in rows[1:]]
    assert len(body) == 2 * 4 * 2 and all(r["analytic_acc"] and r["simulated_acc"] for r in body)
    as_is = [float(r["simulated_acc"]) for r in body if r["scenario"] == "S1" and
             r["protocol"] == "as-is" and float(r["alpha"]) >= 0]
    assert as_is == sorted(as_is)  # alpha 0, 0.5, 1: steps far above sampling error
    assert not list(out.glob(".*tmp-*"))


def test_cli_mlp_rows_have_no_closed_form(tmp_path):
    out = tmp_path / "toy"
    assert main(["toy", "--k", "1", "--n", "200", "--alphas=0,1", "--hidden", "4",
                 "--out", str(out)]) == 0
    with open(out / "toy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mlp = [r for r in rows if r["protocol"].startswith("mlp-")]
    assert len(mlp) == 2 * 2 * 2
    assert all(r["analytic_acc"] == "" and r["simulated_acc"] for r in mlp)


@pytest.mark.parametrize("args, message", [
    (["--alphas=0,1.5"], "alpha=1.5 is outside"),
    (["--k", "0"], "argument --k: '0' must be a positive integer"),
    (["--alphas=a,b"], "--alphas must be"),
    (["--lam", "-1"], "argument --lam: '-1' must be a finite number > 0"),
    (["--length", "0"], "argument --length: '0' must be a finite number > 0"),
    (["--n", "5"], "n must be"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    assert main(["toy", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["toy", "--alphas=0", "--n", "50", "--out", str(blocker / "sub")]) == 2
    assert "is a file where a directory is needed" in capsys.readouterr().err
