"""`engine toy`: both scenarios over an alpha grid, analytic and simulated, into DIR/toy.csv and
two figures, toy_weights.png (Fig. 1) and toy_accuracy.png (Fig. 2). Every file is written
atomically.

toy.csv has one row per (scenario, alpha, protocol), columns scenario, alpha, protocol,
analytic_acc, simulated_acc (accuracies as fractions). Protocols: `as-is` (Bob uses Alice's network
unchanged), `retrained` (Bob refits its output layer); with an MLP (hidden > 0) also `mlp-as-is` and
`mlp-retrained`, whose analytic_acc is empty: the MLP has no closed form.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from engine.atomic import atomic_path, write_bytes
from engine.errors import EngineError
from engine.studies.toy.model import SCENARIOS, alice_weights, bob_accuracy, check, components, kernel
from engine.studies.toy.sim import simulate

COLUMNS = ("scenario", "alpha", "protocol", "analytic_acc", "simulated_acc")
DEFAULT_ALPHAS = tuple(float(a) for a in np.round(np.linspace(-1, 1, 21), 10))
MIN_N = 10  # samples per set; fewer cannot fit the 2k + 1 weights meaningfully anyway
_DENSE = np.linspace(-1, 1, 201)  # alphas of the analytic lines


def parse_alphas(text: str | None) -> list[float]:
    """'-1,-0.5,0,1' -> sorted unique floats; None -> DEFAULT_ALPHAS. Ranges are checked later."""
    if text is None:
        return list(DEFAULT_ALPHAS)
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EngineError(f"--alphas must be comma-separated numbers in [-1, 1], got {text!r}")
    if not values:
        raise EngineError("--alphas is empty; give e.g. --alphas=-1,0,1")
    return sorted({v + 0.0 for v in values})  # + 0.0 turns -0.0 into 0.0


def _validate(k: int, n: int, alphas: Sequence[float], lam: float, hidden: int,
              length: float | None) -> None:
    for scenario in SCENARIOS:
        for alpha in alphas:
            check(scenario, k, alpha, lam)
    kernel(k, length)  # raises on a bad length
    if n < MIN_N:
        raise EngineError(f"n must be >= {MIN_N} (samples per simulated set), got {n}")
    if hidden < 0:
        raise EngineError(f"hidden must be >= 0 (MLP width; 0 = no MLP), got {hidden}")


def _out_dir(out: Path) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create output directory {out}: {exc.strerror or exc}")
    if not os.access(out, os.W_OK | os.X_OK):
        raise EngineError(f"output directory {out} is not writable; choose another --out")
    return out


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _weights_figure(sims: dict, k: int, lam: float, length: float | None, path: Path) -> None:
    fig = Figure(layout="constrained", figsize=(10, 4))
    for i, scenario in enumerate(SCENARIOS):
        ax = fig.add_subplot(1, 2, i + 1)
        lines = np.array([components(alice_weights(scenario, k, a, lam, length)) for a in _DENSE])
        alphas = sorted(a for s, a in sims if s == scenario)
        points = np.array([(sims[scenario, a].own, sims[scenario, a].other) for a in alphas])
        for j, (name, colour) in enumerate((("own group (Alice's)", "C0"),
                                            ("other group (Bob's)", "C1"))):
            ax.plot(_DENSE, lines[:, j], color=colour, label=f"{name}, ridge closed form")
            ax.plot(alphas, points[:, j], "o", color=colour, mfc="none",
                    label=f"{name}, trained by SGD")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel="alpha (correlation between the groups)", ylim=(-1.05, 1.05),
               ylabel="mean weight per group, normalised", title=f"{scenario}: Alice's weights")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.suptitle(f"Alice's ridge weights, k={k}, lam={lam:g}")
    _save(fig, path)


def _accuracy_figure(sims: dict, k: int, lam: float, length: float | None, n: int,
                     path: Path) -> None:
    fig = Figure(layout="constrained", figsize=(10, 4.5))
    for i, scenario in enumerate(SCENARIOS):
        ax = fig.add_subplot(1, 2, i + 1)
        lines = np.array([bob_accuracy(scenario, k, a, lam, length) for a in _DENSE])
        alphas = sorted(a for s, a in sims if s == scenario)
        got = [sims[scenario, a] for a in alphas]
        ax.plot(_DENSE, lines[:, 0], color="C0", label="as is, analytic")
        ax.plot(_DENSE, lines[:, 1], color="C1", linestyle="--",
                label="output layer retrained, analytic")
        ax.plot(alphas, [s.as_is for s in got], "o", color="C0", mfc="none",
                label="as is, simulated")
        ax.plot(alphas, [s.retrained for s in got], "s", color="C1", mfc="none", markersize=4,
                label="retrained, simulated")
        if got and got[0].mlp_as_is is not None:
            ax.plot(alphas, [s.mlp_as_is for s in got], "^", color="C2",
                    label="MLP as is, simulated")
            ax.plot(alphas, [s.mlp_retrained for s in got], "v", color="C3",
                    label="MLP retrained, simulated")
        ax.axhline(0.5, color="grey", linestyle=":", label="chance")
        ax.set(xlabel="alpha (correlation between the groups)", ylabel="Bob's test accuracy",
               ylim=(-0.02, 1.02), title=f"{scenario}: Bob reuses Alice's network")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.suptitle(f"Bob's accuracy, k={k}, lam={lam:g}, n={n} per simulated set")
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def run_toy(out: Path, *, k: int = 4, n: int = 20000, seed: int = 0,
            alphas: Sequence[float] | None = None, lam: float = 1.0, hidden: int = 0,
            length: float | None = None, log: Callable[[str], None] = lambda m: None) -> Path:
    """Compute both scenarios on the alpha grid; write toy.csv and the two figures under `out`."""
    alphas = list(DEFAULT_ALPHAS if alphas is None else alphas)
    _validate(k, n, alphas, lam, hidden, length)
    out = _out_dir(out)
    rows, sims = [], {}
    for scenario in SCENARIOS:
        log(f"{scenario}: {len(alphas)} alphas, n={n}")
        for alpha in alphas:
            sim = simulate(scenario, k, alpha, n, lam, seed, hidden, length)
            sims[scenario, alpha] = sim
            analytic = bob_accuracy(scenario, k, alpha, lam, length)
            results = [("as-is", analytic[0], sim.as_is), ("retrained", analytic[1], sim.retrained)]
            if hidden:
                results += [("mlp-as-is", None, sim.mlp_as_is),
                            ("mlp-retrained", None, sim.mlp_retrained)]
            rows += [(scenario, f"{alpha:g}", p, _fmt(a), _fmt(s)) for p, a, s in results]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    try:
        write_bytes(out / "toy.csv", text.getvalue().encode())
        _weights_figure(sims, k, lam, length, out / "toy_weights.png")
        _accuracy_figure(sims, k, lam, length, n, out / "toy_accuracy.png")
    except OSError as exc:
        raise EngineError(f"cannot write to {out}: {exc.strerror or exc}")
    return out
