"""Numba kernels against their NumPy twins, and the statistics of the pairing."""
import numpy as np
import pytest
import scipy.stats

from engine.kernels import beton as page
from engine.kernels.compose import (_fill_composed, compose, compose_numpy, fill_composed,
                                    fill_composed_numpy, plan_layout)
from engine.kernels.pairing import class_index, draw_pairing, pair, pair_numpy
from engine.data.stats import contingency, cramers_v, label_stats


def _labels(rng, n, classes):
    return rng.integers(0, classes, n).astype(np.int64)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.75, 1.0])
@pytest.mark.parametrize("c_left,c_right", [(10, 10), (26, 10), (10, 26), (3, 7)])
def test_pairing_kernel_matches_numpy_twin(beta, c_left, c_right):
    rng = np.random.default_rng(7)
    left = _labels(rng, 500, c_left)
    right = _labels(rng, 800, c_right)
    offsets, members = class_index(right, c_right)
    draws = draw_pairing(rng, len(left), 1700)  # more samples than left images: cycles
    got = pair(left, draws, beta, offsets, members)
    want = pair_numpy(left, draws.left_order, draws.coin, draws.u_class, draws.u_pick, beta,
                      offsets, members)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    alice, bob, right_idx = got
    np.testing.assert_array_equal(alice, left[draws.left_order])
    np.testing.assert_array_equal(right[right_idx], bob)  # the right image has Bob's class


def test_left_order_cycles_through_whole_permutations():
    draws = draw_pairing(np.random.default_rng(0), 100, 250)
    counts = np.bincount(draws.left_order, minlength=100)
    assert set(counts) <= {2, 3}
    assert sorted(draws.left_order[:100]) == list(range(100))
    assert sorted(draws.left_order[100:200]) == list(range(100))


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_realised_correlation_matches_beta(beta):
    rng = np.random.default_rng(11)
    n, c = 200_000, 10
    left, right = _labels(rng, 60_000, c), _labels(rng, 60_000, c)
    offsets, members = class_index(right, c)
    alice, bob, _ = pair(left, draw_pairing(rng, len(left), n), beta, offsets, members)
    stats = label_stats(alice, bob, c, c, beta)
    p = stats["expected_p_b_eq_pi_a"]
    assert p == pytest.approx(beta + (1 - beta) / c)
    # Binomial standard error of the realised P(b = pi(a)); 5 sigma.
    assert abs(stats["p_b_eq_pi_a"] - p) <= 5 * np.sqrt(p * (1 - p) / n)
    assert stats["cramers_v_corrected"] == pytest.approx(beta, abs=0.01)
    if beta == 1.0:
        np.testing.assert_array_equal(bob, alice % c)
    if beta == 0.0:
        chi2 = scipy.stats.chi2_contingency(contingency(alice, bob, c, c))
        assert chi2.pvalue > 1e-4  # independence not rejected


def test_cramers_v_extremes():
    assert cramers_v(np.eye(5) * 100) == pytest.approx(1.0)
    assert cramers_v(np.full((4, 6), 50)) == pytest.approx(0.0)


LAYOUTS = [((28, 28, 1), (28, 28, 1), "pad"), ((28, 28, 1), (32, 32, 3), "pad"),
           ((32, 32, 3), (28, 28, 1), "pad"), ((28, 28, 1), (32, 32, 3), "resize"),
           ((32, 20, 3), (28, 28, 1), "resize"), ((16, 40, 1), (32, 32, 1), "resize"),
           # the specialised pad kernel: rows of whole 8-byte moves, with an overlapping last
           # move, and under 8 bytes (byte loop); borders split unevenly, non-square halves,
           # grey to RGB in pairs of pixels with odd and even widths, grey to 2 channels
           ((32, 32, 3), (32, 32, 3), "pad"), ((30, 30, 1), (30, 30, 1), "pad"),
           ((7, 7, 1), (7, 7, 1), "pad"), ((27, 27, 1), (32, 32, 3), "pad"),
           ((32, 32, 3), (20, 31, 1), "pad"), ((5, 5, 1), (9, 9, 1), "pad"),
           ((8, 3, 1), (10, 10, 3), "pad"), ((28, 28, 1), (32, 32, 2), "pad"),
           # resized RGB sides (per channel) and a resized grey side replicated to RGB
           ((16, 16, 3), (32, 32, 3), "resize"), ((20, 30, 3), (28, 28, 1), "resize")]


@pytest.mark.parametrize("left_shape,right_shape,fit", LAYOUTS)
def test_compose_kernels_match_numpy_twin(left_shape, right_shape, fit):
    rng = np.random.default_rng(3)
    left = rng.integers(0, 256, (40,) + left_shape, dtype=np.uint8)
    right = rng.integers(0, 256, (50,) + right_shape, dtype=np.uint8)
    li, ri = rng.integers(0, 40, 300), rng.integers(0, 50, 300)
    layout = plan_layout(left_shape, right_shape, fit)
    got = compose(left, right, li, ri, layout)
    np.testing.assert_array_equal(got, compose_numpy(left, right, li, ri, layout))
    assert got.shape == (300,) + layout.shape

    sample = layout.height * layout.width * layout.channels
    buf_k = np.full(sample * 120 + 17, 0xAB, np.uint8)  # poisoned: every sample byte must be written
    buf_t = buf_k.copy()
    fill_composed(buf_k, 100, 120, left, right, li, ri, layout)
    fill_composed_numpy(buf_t, 100, 120, left, right, li, ri, layout)
    np.testing.assert_array_equal(buf_k, buf_t)
    buf_g = np.full_like(buf_k, 0xAB)  # the general kernel, the benchmark's baseline
    lp, rp = layout.left, layout.right
    _fill_composed(buf_g, 100, 120, *layout.shape, left, right, li, ri, lp.geo, lp.rows, lp.cols,
                   rp.geo, rp.rows, rp.cols)
    np.testing.assert_array_equal(buf_g, buf_t)
    np.testing.assert_array_equal(buf_k[:sample * 120].reshape((120,) + layout.shape), got[100:220])


def test_page_kernel_reads_strided_sources():
    """Sources that are views (every other image, a channel of RGB) compose as their copies do."""
    rng = np.random.default_rng(4)
    left = rng.integers(0, 256, (80, 28, 28, 1), dtype=np.uint8)[::2]
    right = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)[..., 1:2]
    li, ri = rng.integers(0, 40, 64), rng.integers(0, 50, 64)
    layout = plan_layout((28, 28, 1), (32, 32, 1))
    sample = layout.height * layout.width * layout.channels
    got, want = np.zeros(sample * 64, np.uint8), np.ones(sample * 64, np.uint8)
    fill_composed(got, 0, 64, left, right, li, ri, layout)
    fill_composed_numpy(want, 0, 64, left.copy(), right.copy(), li, ri, layout)
    np.testing.assert_array_equal(got, want)


def test_pad_layout_keeps_each_half_exact():
    rng = np.random.default_rng(5)
    mnist = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    svhn = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    layout = plan_layout((28, 28, 1), (32, 32, 3))
    assert layout.shape == (32, 64, 3)
    assert plan_layout((28, 28, 1), (28, 28, 1)).shape == (28, 56, 1)
    out = compose(mnist, svhn, np.arange(5), np.arange(5)[::-1], layout)
    for ch in range(3):  # grey replicated, centred with a 2-pixel zero border
        np.testing.assert_array_equal(out[:, 2:30, 2:30, ch], mnist[..., 0])
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not out[:, :, :32][:, border].any()
    np.testing.assert_array_equal(out[:, :, 32:], svhn[::-1])


def test_row_and_gather_kernels_match_twins():
    rng = np.random.default_rng(9)
    rows = rng.integers(0, 256, (64, 100), dtype=np.uint8)
    a, b = np.zeros(4000, np.uint8), np.zeros(4000, np.uint8)
    page.fill_rows(a, 10, 30, rows)
    page.fill_rows_numpy(b, 10, 30, rows)
    np.testing.assert_array_equal(a, b)
    data = rng.integers(0, 256, 10_000, dtype=np.uint8)
    ptrs = rng.integers(0, 10_000 - 37, 200)
    np.testing.assert_array_equal(page.gather(data, ptrs, 37), page.gather_numpy(data, ptrs, 37))
