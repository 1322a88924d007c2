"""How the parity gate decides: exact tests with stated error rates, and n-robust fidelity numbers.

A top-1 agreement of 99.44 % on 360 images is 2 flipped near-ties; the standard error of such an
estimate is about 0.4 points, so comparing it with a 99.5 % bound decides by coin flip. Each
end-to-end check therefore decides with an exact test whose false-reject rate is stated:

* **flips** — the one-sided exact binomial test of H0 "the flip rate is at most the bound"
  (1 − ``min_top1_agreement``): the check fails when the Clopper–Pearson lower confidence bound
  at level 1 − α lies above the bound, i.e. when P(X ≥ flips | n, bound) < α. An artifact whose
  true flip rate is at the bound is rejected with probability at most α, one that is better than
  the bound less often still;
* **accuracy change** — the exact one-sided McNemar test on the paired right/wrong outcomes
  (images the fp32 model got right and the artifact wrong, and the reverse): the check fails when
  the artifact is significantly worse (p < α) *and* the estimated drop exceeds
  ``max_accuracy_drop`` points;
* **logit SQNR** (dB) and the mean **KL divergence** of the softmax, per task: continuous numbers
  whose estimate does not jump by a whole image at a time, each with a floor (ceiling) in the
  tolerance table. These, with the wire SQNR, are what catch a damaged artifact whose few flips
  a 360-image agreement cannot tell from a healthy one's.

Every disagreement is listed with the fp32 model's top-2 margin and the artifact's; a flip whose
fp32 margin lies within ``NEAR_TIE_SIGMAS`` standard deviations of the noise the artifact adds to
that margin (measured over all images of the task) is labelled a near-tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHA = 0.01
NEAR_TIE_SIGMAS = 3.0


@dataclass(frozen=True)
class FlipTest:
    """The flip count of one evaluation set against the bound on the flip rate."""

    n: int
    flips: int
    max_rate: float
    alpha: float
    lower: float  # one-sided Clopper–Pearson lower bound at 1 − alpha
    upper: float  # one-sided Clopper–Pearson upper bound at 1 − alpha
    p_value: float  # P(X ≥ flips | n, max_rate)

    @property
    def rate(self) -> float:
        return self.flips / self.n if self.n else 0.0

    @property
    def passed(self) -> bool:
        return self.p_value >= self.alpha

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "flips": self.flips,
            "rate": round(self.rate, 6),
            "interval": [round(self.lower, 6), round(self.upper, 6)],
            "confidence": 1.0 - self.alpha,
            "p_value": _round_p(self.p_value),
            "max_rate": self.max_rate,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class McNemarTest:
    """Paired right/wrong outcomes of the fp32 model and the artifact on labelled images."""

    n: int
    worse: int  # fp32 right, artifact wrong
    better: int  # fp32 wrong, artifact right
    max_drop_points: float
    alpha: float
    p_value: float  # one-sided exact: P(X ≥ worse | worse + better, ½)

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.worse - self.better) / self.n if self.n else 0.0

    @property
    def passed(self) -> bool:
        return not (self.p_value < self.alpha and self.drop_points > self.max_drop_points)

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "fp32_right_artifact_wrong": self.worse,
            "fp32_wrong_artifact_right": self.better,
            "drop_points": round(self.drop_points, 4),
            "p_value": _round_p(self.p_value),
            "max_drop_points": self.max_drop_points,
            "passed": self.passed,
        }


def _round_p(p: float) -> float:
    return float(f"{p:.4g}")


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), exactly."""
    from scipy.stats import binom

    if k <= 0:
        return 1.0
    return float(binom.sf(k - 1, n, p))


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided exact bounds on a binomial rate: P(rate < lower) ≤ α and P(rate > upper) ≤ α."""
    from scipy.stats import beta

    lower = 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
    upper = 1.0 if k == n else float(beta.ppf(1.0 - alpha, k + 1, n - k))
    return lower, upper


def flip_test(flips: int, n: int, max_rate: float, alpha: float) -> FlipTest:
    lower, upper = clopper_pearson(flips, n, alpha)
    return FlipTest(n, flips, max_rate, alpha, lower, upper, binomial_tail(flips, n, max_rate))


def mcnemar_test(fp32_right: np.ndarray, artifact_right: np.ndarray, max_drop_points: float, alpha: float) -> McNemarTest:
    worse = int(np.sum(fp32_right & ~artifact_right))
    better = int(np.sum(~fp32_right & artifact_right))
    p = binomial_tail(worse, worse + better, 0.5) if worse + better else 1.0
    return McNemarTest(len(fp32_right), worse, better, max_drop_points, alpha, p)


def sidak_alpha(alpha: float, tests: int) -> float:
    """The per-test level that keeps the chance of any false reject among ``tests`` at ``alpha``."""
    return 1.0 - (1.0 - alpha) ** (1.0 / max(1, tests))


# ---- continuous fidelity ------------------------------------------------------------------------


def logit_sqnr_db(got: np.ndarray, want: np.ndarray) -> float:
    """SQNR of the logits with each image's mean removed (softmax ignores a common shift)."""
    want = want.astype(np.float64) - want.mean(-1, keepdims=True)
    got = got.astype(np.float64) - got.mean(-1, keepdims=True)
    noise = float(np.sum((got - want) ** 2))
    signal = float(np.sum(want**2))
    return math.inf if noise == 0 else 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax_kl(got: np.ndarray, want: np.ndarray) -> float:
    """Mean over images of KL(softmax(want) ‖ softmax(got)), in nats."""
    log_p, log_q = _log_softmax(want), _log_softmax(got)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


def top2(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top class, runner-up class and the margin between their logits, per image."""
    order = np.argsort(-logits, axis=-1, kind="stable")
    first, second = order[:, 0], order[:, 1]
    rows = np.arange(len(logits))
    return first, second, logits[rows, first] - logits[rows, second]


def margin_noise(got: np.ndarray, want: np.ndarray) -> float:
    """RMS over images of how much the artifact moves the fp32 model's top-2 margin."""
    first, second, margin = top2(want)
    rows = np.arange(len(want))
    moved = (got[rows, first] - got[rows, second]) - margin
    return float(np.sqrt(np.mean(moved.astype(np.float64) ** 2))) if len(moved) else 0.0


def disagreements(got: np.ndarray, want: np.ndarray, index: np.ndarray, sets: np.ndarray, noise: float) -> list[dict]:
    """Every image whose top-1 differs, with both margins; worst (largest fp32 margin) first."""
    want_first, want_second, want_margin = top2(want)
    got_first, _, got_margin = top2(got)
    rows = np.flatnonzero(want_first != got_first)
    listed = [
        {
            "index": int(index[i]),
            "set": str(sets[i]),
            "fp32_class": int(want_first[i]),
            "fp32_runner_up": int(want_second[i]),
            "artifact_class": int(got_first[i]),
            "fp32_margin": round(float(want_margin[i]), 5),
            "artifact_margin": round(float(got_margin[i]), 5),
            "near_tie": bool(want_margin[i] <= NEAR_TIE_SIGMAS * noise),
        }
        for i in rows
    ]
    return sorted(listed, key=lambda d: -d["fp32_margin"])
