"""The sweeps the claims share. Claims build their `SweepSpec`s here, from the scale, so that two
claims asking for the same runs ask for the same run IDs and the runs train once (the runner
trains every claim's sweeps into one sweep root; engine.studies.claims.runner).

`base(scale)` is Mohamud & Brink's freeze-depth sweep on mnist:fashion: every depth, both
transfer modes, both baselines, the scale's betas, budgets, seeds and archs. Most claims read
a slice of it; others vary one thing (the pair, the block shuffle, Alice's epochs, Bob's epochs).
"""
from __future__ import annotations

from engine.spec import Training
from engine.studies.claims.base import Scale
from engine.sweep.spec import SweepSpec

BASE_PAIR = "mnist:fashion"
# At the same beta, the right-hand source ordered from the closest to the left one (MNIST digits)
# to the farthest (Mohamud & Brink 2025, feature correlation).
RIGHT_BY_SIMILARITY = ("mnist", "emnist-letters", "fashion")


def base(scale: Scale, **changes) -> SweepSpec:
    """The shared freeze-depth sweep at `scale`; `changes` replace SweepSpec fields."""
    spec = SweepSpec(
        pair=BASE_PAIR, betas=scale.betas, layers="all", seeds=scale.seed_list,
        archs=scale.archs, modes=("finetune", "reinit"), baselines=("scratch", "random-frozen"),
        n_bobs=scale.n_bobs, bob=Training(epochs=scale.epochs),
        alice=Training(epochs=scale.alice_epochs), n_train=scale.n_train, n_test=scale.n_test)
    return spec.replace(**changes) if changes else spec


def pair_sweep(scale: Scale, right: str, beta: float) -> SweepSpec:
    """One beta of the base sweep with MNIST on the left and `right` on the right, whole budget."""
    return base(scale, pair=f"mnist:{right}", betas=(beta,), n_bobs=(None,))
