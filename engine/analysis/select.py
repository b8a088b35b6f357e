"""Source selection with a small target budget (Gerace et al. 2024, "Probing transfer learning with
a model of synthetic correlated datasets"; their proxy: layer-wise similarity to a network trained
from scratch on the few target samples available).

Given a target dataset, a budget of `n` labelled target samples (bob_label) and candidate
pre-trained networks (the sweep's Alices), each candidate gets these scores, higher = expected to
transfer better:
- `cka_diag`: mean over depths k of linear CKA(candidate layer k, scratch layer k), on the target
  test inputs (only when both have L layers; the logits layer is left out);
- `cka_best`: mean over the scratch network's hidden layers of the best CKA with any candidate
  hidden layer (best-matching layers; works across architectures);
- `logme`, `h_score`: on the candidate's penultimate features of the n target samples;
- `leep`, `nce`: on the candidate's predictions (softmax / argmax over its own classes) for them.
Each score's Spearman rank correlation with the candidates' measured transfer accuracy (the best
finetune test accuracy of that Alice in the sweep's store at n_bob = n, or the closest stored
n_bob) says how well it would have picked the source.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from engine.analysis import artifacts as art
from engine.analysis.estimators import h_score, leep, logme, nce
from engine.analysis.similarity import cka_matrix
from engine.train.freeze import prepare_bob
from engine.data.manifest import read_manifest
from engine.train.models import build_model
from engine.train.trainer import fit

SCORES = ("cka_diag", "cka_best", "logme", "h_score", "leep", "nce")
LABEL = "bob_label"


def spearman(x, y) -> float:
    """Spearman's rho over the finite pairs; nan with fewer than 2 pairs or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def train_scratch(train, n: int, arch_spec: dict, n_classes: int, *, epochs: int, seed: int,
                  optimizer: str = "sgd", lr: float | None = None, batch_size: int = 128):
    """A network of `arch_spec` (a model spec) trained from scratch on `n` target samples."""
    model = build_model(arch_spec["arch"], train.input_shape, n_classes, depth=arch_spec["depth"],
                        width=arch_spec["width"], global_pool=arch_spec["global_pool"])
    params = prepare_bob(model, None, retrain_from=1, mode="scratch", seed=seed)
    fit(model, params, train.subset(n, seed), LABEL, epochs=epochs, lr=lr, optimizer=optimizer,
        batch_size=batch_size, seed=seed)
    return model.eval()


def actual_accuracy(runs: pd.DataFrame, alice_id: str, n: int) -> tuple[float, int]:
    """(best finetune test accuracy of this Alice at the stored n_bob closest to n, that n_bob)."""
    rows = runs[(runs["alice_id"] == alice_id) & (runs["mode"] == "finetune")]
    if rows.empty:
        return math.nan, 0
    n_bob = int(min(rows["n_bob"].unique(), key=lambda v: (abs(v - n), v)))
    return float(rows[rows["n_bob"] == n_bob]["test_acc"].max()), n_bob


def select_source(out: Path, target: Path, n: int, alice_ids: list[str], runs: pd.DataFrame, *,
                  epochs: int = 10, seed: int = 0, max_samples: int = 1000) -> pd.DataFrame:
    """One row per candidate: its scores, measured accuracy and rank by each score (1 = best);
    the Spearman correlations are in `df.attrs["spearman"]`."""
    from engine.train.alice import load_data
    manifest = read_manifest(target)
    train, test = load_data(target, art.DEVICE)
    n = min(int(n), len(train))
    n_classes = len(manifest["sources"]["right"]["classes"])
    few = train.subset(n, seed)
    y_few = few.labels[LABEL].cpu().numpy()
    scratch: dict[str, torch.nn.Module] = {}
    rows = []
    for alice_id in alice_ids:
        model, metrics = art.alice_model(out, alice_id)
        key = repr(sorted((k, v) for k, v in model.spec.items() if k not in ("n_classes",)))
        if key not in scratch:
            scratch[key] = train_scratch(train, n, model.spec, n_classes, epochs=epochs, seed=seed)
        cka = cka_matrix(model, scratch[key], test, max_samples=max_samples)[:-1, :-1]  # no logits
        L = model.n_layers
        tag = f"target-{manifest['key']}-n{n}-s{seed}"
        feats = art.features(out, alice_id, model, few, tag, L - 1, data_key=manifest["key"])
        logits = art.features(out, alice_id, model, few, tag, L, data_key=manifest["key"])
        acc, n_bob = actual_accuracy(runs, alice_id, n)
        rows.append({
            "alice_id": alice_id, "beta": float(runs[runs["alice_id"] == alice_id]["beta"].iloc[0]),
            "arch": model.spec["arch"], "target": manifest["key"], "n": n,
            "alice_test_acc": float(metrics.get("test_acc", math.nan)),
            "cka_diag": float(np.mean(np.diag(cka))) if cka.shape[0] == cka.shape[1] else math.nan,
            "cka_best": float(cka.max(axis=0).mean()),
            "logme": logme(feats, y_few), "h_score": h_score(feats, y_few),
            "leep": leep(art.softmax(logits), y_few), "nce": nce(logits.argmax(1), y_few),
            "actual_acc": acc, "actual_n_bob": n_bob})
    df = pd.DataFrame(rows)
    for score in SCORES:
        df[f"rank_{score}"] = df[score].rank(ascending=False, method="min")
    df.attrs["spearman"] = {s: spearman(df[s], df["actual_acc"]) for s in SCORES}
    return df
