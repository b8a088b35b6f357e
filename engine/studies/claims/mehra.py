"""Mehra, Zhang & Hamm 2023, "Analysis of task transferability in large pre-trained classifiers"
(arXiv 2023; NeurIPS 2024 as "Understanding the transferability of representations via
task-relatedness"), as claims of `engine reproduce` (engine.studies.claims.base).

The bound (engine.analysis.bound.transfer_bound, README "Transfer bound"): Alice's head carried to
Bob's task through a class prior, a label map and a feature map bounds the target loss by the
weighted source loss + H(Y_T | Y_S) + tau x W1. Each beta of the shared base sweep is one target
task for Alice's network (its penultimate features, the first max_samples training samples of
her dataset with her label and of Bob's with his).

- Thm. 1: the bound is at least the loss of the transferred classifier (`mehra-bound-valid`;
  checked on held-out test samples, since on its own samples it holds by construction).
- Sec. 5, Fig. 3: the bound tracks transferability, so it orders tasks as the fine-tuned
  head's loss does (`mehra-bound-ranks`).
- Sec. 4: learning the transforms tightens the bound over fixed ones (`mehra-transforms-tighten`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import torch

from engine import paths
from engine.analysis import artifacts as art
from engine.atomic import write_bytes
from engine.studies.claims import sweeps
from engine.studies.claims.base import Claim, Context, Evidence
from engine.studies.claims.effects import per_seed, rank_correlation, records, require

PAPER = "Mehra et al. 2023"
STEPS = 200  # Adam steps learning the transforms (`engine analyze bound`'s default)
SMOKE_STEPS = 20  # smoke checks the plumbing only
MODES = ("fixed-all", "learned-all")
TERMS = ("bound", "weighted_source_loss", "conditional_entropy", "wasserstein", "tau",
         "tau_wasserstein", "target_loss", "target_acc")


def steps_at(scale) -> int:
    return SMOKE_STEPS if scale.name == "smoke" else STEPS


def needs(scale):
    return (sweeps.base(scale),)


# The bound per Alice, cached ----------------------------------------------------------------------

def transferred_loss(result: dict, head, z: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of h_T(z) = B softmax(W A^-1 (z - b) + c) on (z, y), with the transforms
    `transfer_bound` chose (`label_map` B [K_t, K_s], `A`, `b`)."""
    w = head.weight.detach().double().cpu()
    c = head.bias.detach().double().cpu()
    a, b = torch.as_tensor(result["A"]).double(), torch.as_tensor(result["b"]).double()
    log_b = torch.log(torch.as_tensor(result["label_map"]).double())  # -inf where B is 0
    z = torch.linalg.solve(a, (torch.as_tensor(z).double() - b).T).T
    log_p = torch.log_softmax(z @ w.T + c, dim=1)
    log_q = torch.logsumexp(log_p[:, None, :] + log_b[None], dim=2)
    y = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    return float(-log_q.gather(1, y[:, None]).mean())


def alice_bound(ctx: Context, alice_id: str, target_key: str, mode: str, seed: int) -> dict:
    """The bound's terms for Alice `alice_id` carried to dataset `target_key` under `mode`, plus
    `test_target_loss` (the transferred head on the first max_samples test samples); cached in
    the sweep root's analysis cache, keyed by everything it depends on."""
    n, steps = ctx.scale.max_samples, steps_at(ctx.scale)
    path = paths.analysis_dir(ctx.root) / "cache" / (
        f"claims-bound-{alice_id}-{target_key}-{mode}-n{n}-s{steps}-seed{seed}.json")
    if path.is_file():
        return json.loads(path.read_text())
    from engine.analysis.bound import transfer_bound
    alice, _ = art.alice_model(ctx.root, alice_id)
    L = alice.n_layers
    a_key = art.alice_dataset(ctx.root, alice_id)
    src = art.dataset(ctx.root, a_key)[0]
    tgt_train, tgt_test, _ = art.dataset(ctx.root, target_key)
    feats = lambda data, key, split: art.features(  # noqa: E731
        ctx.root, alice_id, alice, data, split, L - 1, data_key=key, n=n)
    r = transfer_bound(feats(src, a_key, "train"), art.labels(src, "alice_label", n),
                       feats(tgt_train, target_key, "train"),
                       art.labels(tgt_train, "bob_label", n), alice.head, mode=mode, steps=steps,
                       seed=seed)
    out = {k: float(r[k]) for k in TERMS}
    out["transforms"] = r["transforms"]
    out["test_target_loss"] = transferred_loss(
        r, alice.head, feats(tgt_test, target_key, "test"), art.labels(tgt_test, "bob_label", n))
    write_bytes(path, json.dumps(out, allow_nan=True).encode())
    return out


def bound_table(ctx: Context, modes=MODES) -> pd.DataFrame:
    """One row per (Alice, mode): seed, arch, beta, the bound's terms, the transferred head's test
    loss and Bob's measured head-only (l = L, finetune, largest budget) test loss."""
    rows = require(ctx.rows(needs(ctx.scale)[0]), "the base sweep")
    heads = rows[(rows["mode"] == "finetune") & (rows["retrain_from"] == rows["n_layers"])
                 & (rows["block_shuffle"] == 0)]
    heads = heads[heads["n_bob"] == heads.groupby("alice_id")["n_bob"].transform("max")]
    out = []
    for alice_id, g in heads.groupby("alice_id", sort=False):
        r = g.iloc[0]
        for mode in modes:
            ctx.log(f"bound: Alice {alice_id[:8]} beta {r['beta']:g} seed {r['seed']} {mode}")
            b = alice_bound(ctx, alice_id, r["dataset"], mode, int(r["seed"]))
            out.append({"seed": int(r["seed"]), "arch": r["arch"], "beta": float(r["beta"]),
                        "alice_id": alice_id, "mode": mode, **b,
                        "bob_test_loss": float(g["test_loss"].mean())})
    return pd.DataFrame(out).sort_values(["seed", "arch", "beta", "mode"]).reset_index(drop=True)


# Effects (pure: tables in, tables out) ----------------------------------------------------------

def valid_effects(t: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, arch): min over tasks of bound - transferred head's test loss (nats)."""
    t = t.assign(slack=t["bound"] - t["test_target_loss"])
    return t.groupby(["seed", "arch"])["slack"].min().rename("effect").reset_index()


def rank_effects(t: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, arch): Spearman rho over tasks between the bound and Bob's test loss."""
    out = [{"seed": s, "arch": a, "effect": rank_correlation(g["bob_test_loss"], g["bound"])
            if g["bob_test_loss"].nunique() > 1 else math.nan}
           for (s, a), g in t.groupby(["seed", "arch"])]
    return pd.DataFrame(out, columns=["seed", "arch", "effect"])


def tighten_effects(t: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, arch): mean over tasks of (fixed bound - learned bound) / fixed bound."""
    w = t.pivot_table(index=["seed", "arch", "beta"], columns="mode", values="bound").reset_index()
    w["effect"] = (w["fixed-all"] - w["learned-all"]) / w["fixed-all"]
    return w.groupby(["seed", "arch"])["effect"].mean().reset_index()


# Evaluations -------------------------------------------------------------------------------------

def _valid(ctx: Context) -> Evidence:
    t = bound_table(ctx, ("learned-all",))
    effects = per_seed(valid_effects(t), "effect", ctx.scale.seed_list)
    _figure(ctx, t, ("bound", "test_target_loss", "target_loss", "bob_test_loss"),
            ("bound (train samples)", "transferred head, test", "transferred head, train",
             "Bob l=L, test"), "Bound vs the losses it bounds")
    slack = t["bound"] - t["test_target_loss"]
    summary = (f"bound - transferred head's test loss: min {slack.min():+.3f}, mean "
               f"{slack.mean():+.3f} nats over {len(t)} tasks; valid on {int((slack >= 0).sum())}")
    return Evidence(effects, summary, records(t), str(ctx.figure_path()))


def _ranks(ctx: Context) -> Evidence:
    t = bound_table(ctx, ("learned-all",))
    eff = rank_effects(t)
    effects = per_seed(eff, "effect", ctx.scale.seed_list)
    _figure(ctx, t, ("bound", "bob_test_loss"), ("bound", "Bob l=L test loss"),
            "Bound and Bob's head-only loss across betas")
    summary = f"Spearman(bound, Bob's l=L test loss) over betas: mean {eff['effect'].mean():+.2f}"
    return Evidence(effects, summary, records(t), str(ctx.figure_path()))


def _tighten(ctx: Context) -> Evidence:
    t = bound_table(ctx, MODES)
    effects = per_seed(tighten_effects(t), "effect", ctx.scale.seed_list)
    wide = t.pivot_table(index=["seed", "arch", "beta"], columns="mode",
                         values="bound").reset_index()
    wide.columns.name = None
    from engine.pages import figure, save_png
    fig = figure(6, 3.6)
    ax = fig.subplots()
    for mode in MODES:
        m = t[t["mode"] == mode].groupby("beta")["bound"].mean()
        ax.plot(m.index, m.values, "o-", label=f"{mode} (mean over seeds)")
    ax.set_xlabel("beta")
    ax.set_ylabel("bound on the target loss (nats)")
    ax.legend(fontsize=8)
    save_png(fig, ctx.figure_path())
    m = t.groupby("mode")["bound"].mean()
    summary = (f"mean bound: fixed transforms {m['fixed-all']:.3f} nats, learned "
               f"{m['learned-all']:.3f} nats")
    return Evidence(effects, summary, records(wide), str(ctx.figure_path()))


def _figure(ctx: Context, t: pd.DataFrame, columns, names, title: str) -> None:
    from engine.pages import figure, save_png
    fig = figure(6, 3.6)
    ax = fig.subplots()
    for col, name in zip(columns, names):
        m = t.groupby("beta")[col].mean()
        ax.plot(m.index, m.values, "o-", label=name)
    ax.set_xlabel("beta")
    ax.set_ylabel("cross-entropy (nats), mean over seeds")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    save_png(fig, ctx.figure_path())


CLAIMS = (
    Claim("mehra-bound-valid", PAPER,
          "The bound is at least the target loss of the transferred classifier.",
          "min over betas of bound - transferred head's test cross-entropy (nats)", 0.01,
          "Per seed: for each beta, the bound (learned-all transforms, computed on the first "
          "max_samples training samples) minus the cross-entropy of Alice's head carried over "
          "with the same transforms on the first max_samples held-out test samples of Bob's task; "
          "the effect is the smallest over betas (the bound must hold for every task). On its own "
          "training samples it holds by construction. Margin: 0.01 nats of slack.",
          needs, _valid),
    Claim("mehra-bound-ranks", PAPER,
          "The bound ranks target tasks by transferability: a lower bound goes with a lower "
          "loss of the head trained on the target.",
          "Spearman rho over betas between the bound and Bob's head-only test loss", 0.5,
          "Per seed: Spearman's rho over the base sweep's betas between the bound (learned-all) "
          "and Bob's measured test loss with only the head retrained (l = L, finetune, largest "
          "budget); with several archs the mean over archs. Margin: rho 0.5.",
          needs, _ranks),
    Claim("mehra-transforms-tighten", PAPER,
          "Learning the transforms (class prior, label map, feature map) tightens the bound "
          "over fixed identity transforms.",
          "mean over betas of (fixed bound - learned bound) / fixed bound (fraction)", 0.1,
          "Per seed and beta: the bound with fixed transforms (fixed-all: D = target prior, "
          "B = identity, A = I, b = 0) and learned ones (learned-all, 200 Adam steps, 20 at "
          "smoke; the smallest bound of its candidates, identity included, so never looser). "
          "Effect: mean over betas of the relative reduction. Margin: 10% tighter.",
          needs, _tighten),
)
