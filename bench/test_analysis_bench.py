"""Analysis throughput: linear CKA and the transferability estimators at a full dataset's size.

Run with `.venv/bin/pytest bench/test_analysis_bench.py --benchmark-only -q` (or `make bench`).

Inputs are random, the cost depends only on the shapes: features float32 [N, D] (N = 60,000,
D = 4,096 by default: BENCH_ANALYSIS_N, BENCH_ANALYSIS_D), 10 target classes; CKA compares two
independent such matrices. LEEP and NCE take N samples of a 1,000-class source model (softmax
probabilities, and their argmax). Sizes and the cores used go in `extra_info`.

Floors worth knowing: exact CKA needs X^T X, Y^T Y (syrk, N D^2 flops each) and X^T Y (gemm,
2 N D^2): 4 N D^2 = 4.0e12 float32 flops at the default sizes. LogME needs F^T F (N D^2) and an
eigendecomposition of a D x D matrix; H-score F^T F and a Cholesky factorisation.
Heavy benchmarks run BENCH_ANALYSIS_ROUNDS rounds (default 1), LEEP and NCE five.
"""
import os

import numpy as np
import pytest

from engine.analysis import h_score, leep, linear_cka, logme, nce

N = int(os.environ.get("BENCH_ANALYSIS_N", 60_000))
D = int(os.environ.get("BENCH_ANALYSIS_D", 4_096))
ROUNDS = int(os.environ.get("BENCH_ANALYSIS_ROUNDS", 1))
CLASSES = 10
SOURCE_CLASSES = 1_000


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D), dtype=np.float32)
    y = rng.standard_normal((N, D), dtype=np.float32)
    labels = rng.integers(0, CLASSES, N)
    logits = rng.standard_normal((N, SOURCE_CLASSES), dtype=np.float32) * 3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return x, y, labels, probs


def _run(benchmark, fn, rounds, **info):
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    benchmark.extra_info.update({**info, "cpus": os.cpu_count(), "value": result})
    assert np.isfinite(result)


@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
def test_linear_cka(benchmark, data, unbiased):
    x, y, _, _ = data
    _run(benchmark, lambda: linear_cka(x, y, unbiased=unbiased), ROUNDS, samples=N, features=D)


def test_logme(benchmark, data):
    x, _, labels, _ = data
    _run(benchmark, lambda: logme(x, labels), ROUNDS, samples=N, features=D, classes=CLASSES)


def test_h_score(benchmark, data):
    x, _, labels, _ = data
    _run(benchmark, lambda: h_score(x, labels), ROUNDS, samples=N, features=D, classes=CLASSES)


def test_leep(benchmark, data):
    _, _, labels, probs = data
    _run(benchmark, lambda: leep(probs, labels), 5, samples=N, source_classes=SOURCE_CLASSES,
         classes=CLASSES)


def test_nce(benchmark, data):
    _, _, labels, probs = data
    source = probs.argmax(1)
    _run(benchmark, lambda: nce(source, labels), 5, samples=N, source_classes=SOURCE_CLASSES,
         classes=CLASSES)
