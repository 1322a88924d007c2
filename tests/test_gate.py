"""The gate's decision rules against hand-computed values, each with a twin that must fail."""


import numpy as np
import pytest

from dtconvert import gate


def test_binomial_tail_matches_the_hand_computed_sum():
    # P(X ≥ 2 | n = 360, p = 0.005) = 1 − 0.995³⁶⁰ − 360 · 0.005 · 0.995³⁵⁹
    want = 1 - 0.995**360 - 360 * 0.005 * 0.995**359
    assert gate.binomial_tail(2, 360, 0.005) == pytest.approx(want, rel=1e-9)
    assert gate.binomial_tail(0, 360, 0.005) == 1.0
    assert gate.binomial_tail(3, 3, 0.5) == pytest.approx(0.125)


def test_clopper_pearson_at_zero_and_all_has_a_closed_form():
    # With no flips the upper bound solves (1 − u)ⁿ = α; with every image flipped, lower solves lⁿ = α.
    lower, upper = gate.clopper_pearson(0, 1437, 0.005)
    assert lower == 0.0 and upper == pytest.approx(1 - 0.005 ** (1 / 1437), rel=1e-9)
    lower, upper = gate.clopper_pearson(50, 50, 0.01)
    assert upper == 1.0 and lower == pytest.approx(0.01 ** (1 / 50), rel=1e-9)


def test_clopper_pearson_bounds_contain_the_estimate_and_have_the_stated_coverage():
    lower, upper = gate.clopper_pearson(2, 360, 0.01)
    assert lower < 2 / 360 < upper
    # The lower bound is the rate at which seeing ≥ 2 flips has probability exactly α.
    assert gate.binomial_tail(2, 360, lower) == pytest.approx(0.01, rel=1e-6)


def test_two_near_tie_flips_in_360_pass_the_flip_test():
    """The AMD case of the issue: 2 of 360 flipped (99.44 %) is no evidence that the rate exceeds 0.5 %."""
    test = gate.flip_test(2, 360, 0.005, 0.01)
    assert test.passed and test.p_value == pytest.approx(0.5377, abs=1e-3)
    assert test.lower < 0.005 < test.upper


def test_many_flips_fail_the_flip_test():
    test = gate.flip_test(12, 360, 0.005, 0.01)  # 96.7 % agreement
    assert not test.passed and test.p_value < 0.01 and test.lower > 0.005


def test_flip_test_false_reject_rate_at_the_bound_is_at_most_alpha():
    """Exactly: an artifact whose true flip rate is the bound is rejected at most α of the time."""
    first_rejected = next(k for k in range(361) if not gate.flip_test(k, 360, 0.005, 0.01).passed)
    assert first_rejected == 7  # 7 of 360 flips (98.06 %) is the least that shows a rate > 0.5 % at α = 0.01
    assert gate.binomial_tail(first_rejected, 360, 0.005) <= 0.01
    assert gate.binomial_tail(first_rejected - 1, 360, 0.005) > 0.01  # and the test uses all of α it may
    # Twin: an artifact flipping 2 % of images is rejected most of the time.
    assert gate.binomial_tail(first_rejected, 360, 0.02) > 0.5


def test_mcnemar_passes_a_small_difference_and_fails_a_significant_large_one():
    fp32 = np.ones(360, dtype=bool)
    artifact = fp32.copy()
    artifact[:2] = False  # two images newly wrong: −0.56 points, but p = 0.25
    small = gate.mcnemar_test(fp32, artifact, 0.5, 0.01)
    assert small.worse == 2 and small.better == 0 and small.p_value == pytest.approx(0.25)
    assert small.drop_points == pytest.approx(100 * 2 / 360) and small.passed
    artifact[:10] = False  # ten newly wrong, none newly right: p = 2⁻¹⁰
    large = gate.mcnemar_test(fp32, artifact, 0.5, 0.01)
    assert large.p_value == pytest.approx(2**-10) and not large.passed


def test_mcnemar_needs_both_significance_and_a_drop_over_the_bound():
    fp32 = np.ones(2000, dtype=bool)
    artifact = fp32.copy()
    artifact[:9] = False  # significant (p = 2⁻⁹) but only 0.45 points
    assert gate.mcnemar_test(fp32, artifact, 0.5, 0.01).passed
    fp32[100:110] = False  # ten the fp32 model got wrong and the artifact right: 9 vs 10, no evidence
    artifact[100:110] = True
    test = gate.mcnemar_test(fp32, artifact, 0.5, 0.01)
    assert test.worse == 9 and test.better == 10 and test.passed


def test_logit_sqnr_of_ten_percent_noise_is_twenty_db_and_ignores_a_common_shift():
    rng = np.random.default_rng(1)
    want = rng.standard_normal((500, 10))
    want -= want.mean(-1, keepdims=True)
    noise = rng.standard_normal((500, 10))
    noise -= noise.mean(-1, keepdims=True)
    noise *= 0.1 * np.linalg.norm(want) / np.linalg.norm(noise)
    assert gate.logit_sqnr_db(want + noise, want) == pytest.approx(20.0, abs=1e-6)
    assert gate.logit_sqnr_db(want + 3.0, want) > 250  # softmax cannot see a per-image constant (float rounding only)


def test_softmax_kl_is_zero_for_equal_logits_and_matches_two_class_arithmetic():
    want = np.array([[0.0, 0.0]])
    got = np.array([[np.log(3.0), 0.0]])  # softmax (0.75, 0.25) against (0.5, 0.5)
    expected = 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)
    assert gate.softmax_kl(got, want) == pytest.approx(expected)
    assert gate.softmax_kl(want, want) == 0.0


def test_disagreements_list_margins_and_label_near_ties():
    want = np.array([[2.0, 1.99, 0.0], [5.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    got = np.array([[1.99, 2.0, 0.0], [0.0, 5.0, 0.0], [0.0, 1.0, 0.0]])
    listed = gate.disagreements(got, want, np.array([7, 8, 9]), np.array(["held-out", "rest", "rest"]), noise=0.01)
    assert [d["index"] for d in listed] == [8, 7]  # largest fp32 margin first; image 9 agrees
    far, tie = listed
    assert (far["fp32_class"], far["artifact_class"], far["fp32_margin"], far["near_tie"]) == (0, 1, 5.0, False)
    assert (tie["fp32_class"], tie["fp32_runner_up"], tie["artifact_class"], tie["near_tie"]) == (0, 1, 1, True)
    assert tie["fp32_margin"] == pytest.approx(0.01) and tie["artifact_margin"] == pytest.approx(0.01)


def test_margin_noise_measures_how_far_the_artifact_moves_the_top_two_margin():
    want = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    got = want + np.array([[0.1, -0.1, 0.0], [0.0, 0.0, 0.0]])  # margin moved by 0.2, then 0
    assert gate.margin_noise(got, want) == pytest.approx(np.sqrt((0.2**2 + 0) / 2))


def test_sidak_keeps_the_family_wise_rate():
    per_test = gate.sidak_alpha(0.01, 2)
    assert 1 - (1 - per_test) ** 2 == pytest.approx(0.01)
    assert gate.sidak_alpha(0.01, 1) == pytest.approx(0.01)
