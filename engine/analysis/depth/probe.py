"""Linear probes per depth: a softmax-regression head on Alice's layer l-1 output (l = 1: the
input), trained briefly and scored by its accuracy on Bob's samples it did not see. Two-fold
cross-fitting (train on one half, score on the other, and back) uses every sample for both.
All 2 x L heads train together as one batched matmul per step (features zero-padded to the
widest depth), as the batched trainer trains head-only runs."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

STEPS = 100          # full-batch Adam steps
LR = 0.01
WEIGHT_DECAY = 1e-4  # per weight, on standardised features


def predict(task) -> np.ndarray:
    y = torch.as_tensor(task.labels)
    n, L, C = task.n, task.L, task.n_classes
    gen = torch.Generator().manual_seed(task.seed)
    perm = torch.randperm(n, generator=gen)
    folds = [perm[: n // 2], perm[n // 2:]]
    feats = [torch.as_tensor(task.features(l - 1)) for l in range(1, L + 1)]
    d = max(f.shape[1] for f in feats)
    m = min(len(f) for f in folds)  # equal fold sizes keep the heads in one batch
    train_x = torch.zeros(2 * L, m, d)
    test_x = torch.zeros(2 * L, n - m, d)
    train_y = torch.empty(2 * L, m, dtype=torch.long)
    test_y = torch.empty(2 * L, n - m, dtype=torch.long)
    for j, f in enumerate(feats):
        for side in range(2):
            tr, te = folds[side][:m], torch.cat([folds[1 - side], folds[side][m:]])
            mean, std = f[tr].mean(0), f[tr].std(0).clamp_min(1e-6)
            k = 2 * j + side
            train_x[k, :, : f.shape[1]] = (f[tr] - mean) / std
            test_x[k, :, : f.shape[1]] = (f[te] - mean) / std
            train_y[k], test_y[k] = y[tr], y[te]
    w = torch.zeros(2 * L, d, C, requires_grad=True)
    b = torch.zeros(2 * L, 1, C, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(STEPS):
        opt.zero_grad()
        logits = torch.baddbmm(b, train_x, w)
        F.cross_entropy(logits.reshape(-1, C), train_y.reshape(-1)).backward()
        opt.step()
    with torch.no_grad():
        acc = (torch.baddbmm(b, test_x, w).argmax(-1) == test_y).float().mean(1)
    task.count(STEPS * 3 * 2.0 * 2 * L * m * d * C + 2.0 * 2 * L * (n - m) * d * C)
    return acc.view(L, 2).mean(1).numpy()
