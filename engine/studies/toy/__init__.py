"""Gaussian feature-correlation model of transfer (Mohamud & Brink 2025, Figs. 1 and 2).

`model`: the S1/S2 covariances, Alice's ridge weights and Bob's accuracy in closed form.
`sim`: the same quantities from simulated samples and networks trained by SGD.
`run`: `engine toy`, the alpha grid into toy.csv and two figures.
"""
from engine.studies.toy.model import (ALPHA_RANGE, SCENARIOS, alice_weights, bob_accuracy, components,
                              covariance, s1_rho, s1_weights, sample, sheppard)
from engine.studies.toy.run import COLUMNS, DEFAULT_ALPHAS, parse_alphas, run_toy
from engine.studies.toy.sim import Simulated, ridge, simulate, train_linear, train_mlp

__all__ = ["ALPHA_RANGE", "COLUMNS", "DEFAULT_ALPHAS", "SCENARIOS", "Simulated", "alice_weights",
           "bob_accuracy", "components", "covariance", "parse_alphas", "ridge", "run_toy",
           "s1_rho", "s1_weights", "sample", "sheppard", "simulate", "train_linear", "train_mlp"]
