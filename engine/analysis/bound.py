"""Mehra et al.'s bound on the target loss of a source linear head carried over to a target task.

Source: A. Mehra, Y. Zhang, J. Hamm, "Analysis of task transferability in large pre-trained
classifiers" (arXiv, 2023; NeurIPS 2024 as "Understanding the transferability of
representations via task-relatedness"); their code: github.com/hammlab/TaskTransferAnalysis.

Setting. z are features (the input of a linear head), h(z) = W z + c the source head over K_s
classes, L_S(s) its mean cross-entropy on the source samples of class s, pi_T the target class
prior. The source task is transformed by a class prior D over source classes, a label map
B[t, s] = P(target class t | source class s) and a feature map z -> A z + b (A invertible), which
turns h into a classifier of target classes h_T(z) = B softmax(W A^-1 (z - b) + c). Then

    L_T(h_T) <= sum_s D(s) L_S(s)  +  H(Y_T | Y_S)  +  tau(A) * W1
                weighted source loss  conditional entropy  Lipschitz constant x class-wise W1

with H(Y_T | Y_S) = -sum_{s,t} D(s) B[t, s] log B[t, s] and W1 = sum_t pi_T(t) W1(P''(z | t),
P_T(z | t)), where P''(z | t) is the transformed source conditional: the mixture over s of the
source class-s features moved by z -> A z + b, weighted by P(s | t). The bound holds exactly for the
empirical distributions passed in, so `target_loss` (the loss of h_T on the same target samples) is
always at most `bound`; a head fine-tuned on the target (`target_head`) usually does at least as
well as h_T, which is the comparison the paper draws.

Choices of ours (the paper's code differs):
- The transforms are one joint Q[t, s] = pi_T(t) R[t, s] with R row-stochastic, so D(s) =
  sum_t Q[t, s], B = Q / D, and B D = pi_T holds exactly (their code adds a penalty for it).
- tau is the closed-form constant of `lipschitz_constant`, applied to W A^-1 (their code trains
  the head with a gradient-norm penalty and measures the largest gradient norm).
- W1 weights class t by pi_T(t) (their code: 1 / K; the same for balanced classes).
- The reported bound is the smallest over the transforms evaluated (the starting point, the
  identity transforms when they are defined, and the end of optimisation), each computed exactly on
  all samples; a bound holds for any transform, so the smallest one is valid.
"""
from __future__ import annotations

import math

import numpy as np
import ot
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist
from torch import Tensor, nn

from engine.errors import EngineError
from engine.threads import one_thread

MODES = ("fixed-all", "learned-A", "learned-all")
SQRT2 = math.sqrt(2.0)
MAX_DIM = 2048  # A is a dense d x d matrix; reduce wider features first (e.g. global pooling)
EMD_ITERS = 10_000_000  # POT's default (1e5) stops short of optimal on ~2k x 200 problems
CONFUSION_FLOOR = 1e-3  # smallest starting P(s | t) in learned-all, so every logit is finite


# Exact optimal transport --------------------------------------------------------------------------

def _emd(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal plan, and the dual potential of `a` (the gradient in `a`, up to a constant)."""
    plan, log = ot.emd(a, b, cost, numItermax=EMD_ITERS, log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"exact optimal transport did not converge: {log['warning']}")
    return plan, log["u"]


def _mass(w, n: int) -> np.ndarray:
    w = np.full(n, 1.0 / n) if w is None else np.asarray(w, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    return w / w.sum()


def wasserstein1(x, y, a=None, b=None) -> float:
    """W1 between the point clouds x [n, d] and y [m, d] with Euclidean ground cost, solved exactly
    (POT's network simplex); `a`, `b` are the points' masses (uniform when None, normalised)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    cost = cdist(x, y)
    plan, _ = _emd(_mass(a, len(x)), _mass(b, len(y)), cost)
    return float((plan * cost).sum())


def classwise_wasserstein1(xs, ys, xt, yt) -> float:
    """sum_t pi_T(t) W1(source points of class t, target points of class t): the W1 term with
    identity transforms. pi_T is the empirical target prior; every target class needs sources."""
    xs, xt = np.asarray(xs), np.asarray(xt)
    ys, yt = np.asarray(ys), np.asarray(yt)
    total = 0.0
    for t in np.unique(yt):
        if not (ys == t).any():
            raise EngineError(f"class {t} has target samples but no source samples")
        total += (yt == t).mean() * wasserstein1(xs[ys == t], xt[yt == t])
    return float(total)


# The head -----------------------------------------------------------------------------------------

def _linear(head: nn.Linear) -> tuple[Tensor, Tensor]:
    if not isinstance(head, nn.Linear):
        raise TypeError(f"head must be an nn.Linear (such as models.Head), "
                        f"got {type(head).__name__}")
    w = head.weight.detach().cpu().double()
    c = head.bias.detach().cpu().double() if head.bias is not None else torch.zeros(len(w)).double()
    return w, c


def lipschitz_constant(head: nn.Linear) -> float:
    """tau = sqrt(2) * ||W||_2 (largest singular value): a Lipschitz constant, in the Euclidean norm
    of the features, of z -> cross-entropy(softmax(W z + c), y) for every label y.

    Why: the gradient in z is W^T (p - e_y), and two probability vectors are at most sqrt(2) apart.
    The same holds with a label map B (the gradient is W^T (p - r), r = P(s | t, z)), so tau also
    covers the transferred classifier; with a feature map A it becomes sqrt(2) * ||W A^-1||_2.
    """
    w, _ = _linear(head)
    return SQRT2 * float(torch.linalg.matrix_norm(w, ord=2))


def penultimate_features(model, data, batch_size: int = 1024) -> np.ndarray:
    """The head's input for every sample of `data` (a train.DeviceData), after the head's pooling
    and flattening: float32 [N, d], computed in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.inputs(slice(start, start + batch_size))
            for layer in model.layers[:-1]:
                x = layer(x)
            if getattr(model.head, "pool", False):
                x = x.mean(dim=(2, 3))
            out.append(x.flatten(1).float().cpu())
    return torch.cat(out).numpy()


# The bound for given transforms -------------------------------------------------------------------

def _tau(w: Tensor, a: Tensor) -> Tensor:
    return SQRT2 * torch.linalg.matrix_norm(torch.linalg.solve(a.T, w.T).T, ord=2)


def _w1(zs: Tensor, ys: Tensor, zt: Tensor, yt: Tensor, r: Tensor, a: Tensor, b: Tensor,
        prior_t: Tensor) -> Tensor:
    """sum_t pi_T(t) W1(P''(z | t), P_T(z | t)), solved exactly per class.

    The value is exact; its gradient is the envelope theorem's: in (a, b) through the optimal
    plan's cost, in r through the dual potentials, plan and potentials held fixed. The transport
    is NumPy/POT; torch sees only a linear surrogate with the right value and gradient.
    """
    mass = r[:, ys] / torch.bincount(ys, minlength=r.shape[1]).clamp_min(1)[ys]  # [K_t, n]
    mass = mass / mass.sum(1, keepdim=True).clamp_min(1e-300)  # P(s | t) spread over class s
    mass_np, zt, yt = mass.detach().numpy(), zt.numpy(), yt.numpy()
    moved = (zs @ a.detach().T + b.detach()).numpy()
    value = 0.0
    grad_moved = np.zeros_like(moved)    # d W1 / d (moved source point)
    potentials = np.zeros_like(mass_np)  # d W1 / d (source point mass), up to a constant per t
    for t in range(r.shape[0]):
        keep, in_t, p_t = mass_np[t] > 0, yt == t, float(prior_t[t])
        if p_t == 0 or not in_t.any() or not keep.any():  # (a minibatch can miss a class)
            continue
        src, tgt = moved[keep], zt[in_t]
        cost = cdist(src, tgt)
        plan, u = _emd(mass_np[t, keep], np.full(len(tgt), 1.0 / len(tgt)), cost)
        value += p_t * float((plan * cost).sum())
        i, j = np.nonzero(plan)  # at most n + m - 1 entries
        unit = (src[i] - tgt[j]) / np.maximum(cost[i, j], 1e-300)[:, None]
        np.add.at(grad_moved, np.flatnonzero(keep)[i], p_t * plan[i, j, None] * unit)
        potentials[t, keep] = p_t * u
    grad_moved = torch.from_numpy(grad_moved)
    grad_a, grad_b = grad_moved.T @ zs, grad_moved.sum(0)  # moved_i = a z_i + b
    return (value + (grad_a * (a - a.detach())).sum() + (grad_b * (b - b.detach())).sum()
            + (torch.from_numpy(potentials) * (mass - mass.detach())).sum())


class _Task:
    """Source and target samples as float64 tensors, with what the bound needs of the head."""

    def __init__(self, zs, ys, zt, yt, head: nn.Linear, n_target_classes: int | None):
        self.zs = torch.as_tensor(np.asarray(zs), dtype=torch.float64)
        self.zt = torch.as_tensor(np.asarray(zt), dtype=torch.float64)
        self.ys = torch.as_tensor(np.asarray(ys), dtype=torch.int64)
        self.yt = torch.as_tensor(np.asarray(yt), dtype=torch.int64)
        self.w, self.c = _linear(head)
        k_s, d = self.w.shape
        k_t = int(self.yt.max()) + 1 if n_target_classes is None else int(n_target_classes)
        for name, z, y, k in (("source", self.zs, self.ys, k_s), ("target", self.zt, self.yt, k_t)):
            if z.ndim != 2 or z.shape[1] != d or y.shape != (len(z),) or len(z) == 0:
                raise EngineError(f"{name} features must be [N, {d}] with N labels, got "
                                  f"{tuple(z.shape)} and {tuple(y.shape)}")
            if int(y.min()) < 0 or int(y.max()) >= k:
                raise EngineError(f"{name} labels must be in 0..{k - 1}")
        self.k_s, self.k_t, self.d = k_s, k_t, d
        self.prior_t = torch.bincount(self.yt, minlength=k_t).double() / len(self.yt)
        self.present = torch.bincount(self.ys, minlength=k_s) > 0
        logits = self.zs @ self.w.T + self.c
        losses = F.cross_entropy(logits, self.ys, reduction="none")
        per_class = torch.zeros(k_s, dtype=torch.float64).index_add_(0, self.ys, losses)
        self.class_loss = per_class / torch.bincount(self.ys, minlength=k_s).clamp_min(1)
        self.source_loss = float(losses.mean())
        self.source_acc = float((logits.argmax(1) == self.ys).double().mean())

    def identity_joint(self) -> Tensor | None:
        """Q = diag(pi_T): target class t is source class t (None if that is not possible)."""
        needed = self.prior_t > 0
        if self.k_t > self.k_s or not bool(self.present[:self.k_t][needed].all()):
            return None
        q = torch.zeros(self.k_t, self.k_s, dtype=torch.float64)
        q[:, :self.k_t] = torch.diag(self.prior_t)
        return q

    def objective(self, q: Tensor, a: Tensor, b: Tensor, src=slice(None), tgt=slice(None)) -> dict:
        """Each term of the bound for joint q [K_t, K_s] and feature map (a, b); W1 on the samples
        at `src` and `tgt` (all of them by default; minibatches while optimising)."""
        d_s = q.sum(0)
        r = q / self.prior_t.clamp_min(1e-300)[:, None]  # P(s | t)
        weighted = (d_s * self.class_loss).sum()
        entropy = -(torch.special.xlogy(q, q).sum() - torch.special.xlogy(d_s, d_s).sum())
        w1 = _w1(self.zs[src], self.ys[src], self.zt[tgt], self.yt[tgt], r, a, b, self.prior_t)
        tau = _tau(self.w, a)
        bound = weighted + entropy + tau * w1
        return {"bound": bound, "weighted_source_loss": weighted, "conditional_entropy": entropy,
                "wasserstein": w1, "tau": tau}

    def transferred(self, q: Tensor, a: Tensor, b: Tensor) -> tuple[float, float]:
        """(loss, accuracy) of h_T(z) = B softmax(W A^-1 (z - b) + c) on the target samples."""
        d_s = q.sum(0)
        log_b = torch.log(q / d_s.clamp_min(1e-300))  # log B[t, s]; -inf where B is 0
        z = torch.linalg.solve(a, (self.zt - b).T).T
        log_p = torch.log_softmax(z @ self.w.T + self.c, dim=1)
        log_q = torch.logsumexp(log_p[:, None, :] + log_b[None], dim=2)  # log (B p)_t, [N, K_t]
        loss = -log_q.gather(1, self.yt[:, None]).mean()
        return float(loss), float((log_q.argmax(1) == self.yt).double().mean())


# Optimising the transforms ------------------------------------------------------------------------

def _joint_from_logits(task: _Task, logits: Tensor) -> Tensor:
    masked = logits.masked_fill(~task.present[None, :], float("-inf"))
    return task.prior_t[:, None] * torch.softmax(masked, dim=1)


def _confusion_logits(task: _Task) -> Tensor:
    """log P(s | t) as the source head predicts it on the target samples (learned-all's start)."""
    p = torch.softmax(task.zt @ task.w.T + task.c, dim=1)
    conf = torch.zeros(task.k_t, task.k_s, dtype=torch.float64).index_add_(0, task.yt, p)
    conf = conf / conf.sum(1, keepdim=True).clamp_min(1e-300)
    return torch.log(conf.clamp_min(CONFUSION_FLOOR))


def _evaluate(task: _Task, q: Tensor, a: Tensor, b: Tensor, name: str) -> dict:
    q, a, b = q.detach(), a.detach(), b.detach()
    with torch.no_grad():
        terms = {k: float(v) for k, v in task.objective(q, a, b).items()}
        loss, acc = task.transferred(q, a, b)
    terms["conditional_entropy"] = max(terms["conditional_entropy"], 0.0)  # >= 0 up to rounding
    return {**terms, "target_loss": loss, "target_acc": acc, "transforms": name,
            "prior": q.sum(0).numpy(), "label_map": (q / q.sum(0).clamp_min(1e-300)).numpy(),
            "A": a.numpy(), "b": b.numpy()}


def transfer_bound(source_feats, source_labels, target_feats, target_labels, head: nn.Linear,
                   mode: str = "learned-all", *, target_head: nn.Linear | None = None,
                   n_target_classes: int | None = None, steps: int = 200, lr: float = 1e-2,
                   batch_size: int = 256, seed: int = 0) -> dict:
    """The bound of the module docstring for the source `head` (over K_s source classes) carried to
    the target task, with the transforms fixed or learned:

        fixed-all    D = pi_T, B = identity (target class t is source class t), A = I, b = 0
        learned-A    D and B as fixed-all; A, b learned
        learned-all  D, B (through the joint Q), A and b learned; starts from the head's confusion
                     P(s | t) on the target samples, A = I, b = 0

    (D = pi_T rather than the source prior: B D = pi_T must hold, and the two agree for matching
    priors.) Learning runs `steps` Adam steps at `lr` on minibatches of `batch_size` per side.
    Features are the head's input (see `penultimate_features`); labels are 0-based integers.

    Returns floats `bound`, `weighted_source_loss`, `conditional_entropy`, `wasserstein`, `tau`,
    `tau_wasserstein`, `target_loss`/`target_acc` (h_T on the target samples: always <= bound),
    `source_loss`/`source_acc` (the head on the source samples), `finetuned_loss`/`finetuned_acc`
    (`target_head` on the target samples, when given), the chosen transforms `prior` [K_s],
    `label_map` B [K_t, K_s], `A` [d, d], `b` [d], `transforms` (which candidate won: "identity",
    "confusion" or "learned") and `history`: (transforms, bound) for every candidate evaluated.
    """
    if mode not in MODES:
        raise EngineError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    with one_thread():
        task = _Task(source_feats, source_labels, target_feats, target_labels, head,
                     n_target_classes)
        candidates = _candidates(task, mode, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
        best = min(candidates, key=lambda c: c["bound"])
        out = {"mode": mode, **best, "tau_wasserstein": best["tau"] * best["wasserstein"],
               "source_loss": task.source_loss, "source_acc": task.source_acc,
               "history": [(c["transforms"], c["bound"]) for c in candidates]}
        if target_head is not None:
            w, c = _linear(target_head)
            logits = task.zt @ w.T + c
            out["finetuned_loss"] = float(F.cross_entropy(logits, task.yt))
            out["finetuned_acc"] = float((logits.argmax(1) == task.yt).double().mean())
    return out


def _candidates(task: _Task, mode: str, *, steps: int, lr: float, batch_size: int,
                seed: int) -> list[dict]:
    """The transforms tried, each evaluated exactly: identity (when defined), the learned-all start,
    and the end of optimisation."""
    if mode != "fixed-all" and task.d > MAX_DIM:
        raise EngineError(f"{mode} learns a {task.d} x {task.d} feature map; reduce the features "
                          f"to at most {MAX_DIM} dimensions (e.g. a global-pooled head) or use "
                          "fixed-all")
    a = torch.eye(task.d, dtype=torch.float64)
    b = torch.zeros(task.d, dtype=torch.float64)
    identity = task.identity_joint()
    if identity is None and mode != "learned-all":
        raise EngineError(f"{mode} maps target class t to source class t, but some target class "
                          "has no source samples or there are more target than source classes; "
                          "use learned-all")
    candidates = [] if identity is None else [_evaluate(task, identity, a, b, "identity")]
    if mode == "fixed-all":
        return candidates
    a.requires_grad_(True)
    b.requires_grad_(True)
    params = [a, b]
    if mode == "learned-all":
        logits = _confusion_logits(task).requires_grad_(True)
        params.append(logits)
        joint = lambda: _joint_from_logits(task, logits)  # noqa: E731
        candidates.append(_evaluate(task, joint(), a, b, "confusion"))
    else:
        joint = lambda: identity  # noqa: E731
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    n_s, n_t = len(task.zs), len(task.zt)
    for _ in range(steps):
        src = torch.randperm(n_s, generator=gen)[:batch_size]
        tgt = torch.randperm(n_t, generator=gen)[:batch_size]
        loss = task.objective(joint(), a, b, src, tgt)["bound"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    candidates.append(_evaluate(task, joint(), a, b, "learned"))
    return candidates
