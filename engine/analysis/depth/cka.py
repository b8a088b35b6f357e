"""Representation similarity per depth (Gerace et al. 2024's proxy): a network of Alice's
architecture is trained from scratch on Bob's n_bob samples with the sweep's budget, and each of
Alice's layers k is compared with its layer k by linear CKA on those samples (Kornblith et al.
2019). A layer is worth keeping when it is closer to what Bob's own data teaches than the same
layer at a random initialisation is: score(l) = sum over kept layers k < l of
CKA(Alice_k, scratch_k) - CKA(random_k, scratch_k) (score(1) = 0, nothing kept)."""
from __future__ import annotations

import numpy as np
import torch

from engine.analysis.select import train_scratch
from engine.analysis.similarity import cka_matrix
from engine.train.models import build_model


def _diag(a, b, data) -> np.ndarray:
    return np.diag(cka_matrix(a, b, data, max_samples=len(data)))[:-1]  # no logits


def predict(task) -> np.ndarray:
    spec, b = task.alice.spec, task.budget
    scratch = train_scratch(task.data, task.n, spec, task.n_classes, epochs=b.epochs,
                            seed=task.seed, optimizer=b.optimizer, lr=b.lr,
                            batch_size=b.batch_size)
    torch.manual_seed(task.seed)
    random = build_model(spec["arch"], spec["input_shape"], spec["n_classes"],
                         depth=spec["depth"], width=spec["width"],
                         global_pool=spec["global_pool"]).eval()
    gain = _diag(task.alice, scratch, task.data) - _diag(random, scratch, task.data)
    fwd, n = sum(task.fwd), task.n
    # training (3x forward per sample and epoch), then 2 forward passes of each of 3 networks
    # per comparison, and per layer pair the n x n Grams (2 n^2 d) and their products (2 n^2)
    widths = [float(np.prod(h.shape[1:])) for h in
              task.alice.activations(task.data.inputs(slice(0, 1)))][:-1]
    task.count(3 * b.epochs * n * fwd + 4 * n * fwd
               + 2 * sum(2.0 * n * n * 2 * w + 2.0 * n * n for w in widths))
    return np.concatenate([[0.0], np.cumsum(gain)])
