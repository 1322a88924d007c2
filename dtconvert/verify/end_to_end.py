"""verify's end-to-end checks: device artifact → int8 wire → cloud decoder against the fp32 model, per task."""

from __future__ import annotations

import numpy as np

from dtconvert import gate
from dtconvert.evaluation import FOLDER, HELDOUT, VerificationData
from dtconvert.verify.results import Report


class EndToEnd:
    """The end-to-end checks of one artifact × runtime against the fp32 model, per task (see
    :mod:`dtconvert.gate` for how each decides)."""

    def __init__(self, report: Report, evaluation: VerificationData, tasks: list[str], reference_logits: dict) -> None:
        self.report, self.evaluation, self.tasks, self.reference_logits = report, evaluation, tasks, reference_logits

    def check(self, artifact: str, runtime: str, logits: dict, bounds: dict) -> dict:
        numbers = {}
        for t, task in enumerate(self.tasks):
            got, want = logits[task], self.reference_logits[task]
            if got.shape != want.shape:
                self.report.add(
                    artifact, runtime, f"logits [{task}]", False, f"shape {list(got.shape)}, the fp32 model's is {list(want.shape)}"
                )
                numbers[task] = {"logits_shape": list(got.shape)}
                continue
            numbers[task] = {
                **self._agreement(artifact, runtime, task, got, want, bounds),
                **self._fidelity(artifact, runtime, task, got, want, bounds),
                **self._collapse(artifact, runtime, task, got, want),
                **self._accuracy(artifact, runtime, task, t, got, want, bounds),
            }
        return numbers

    def _agreement(self, artifact: str, runtime: str, task: str, got: np.ndarray, want: np.ndarray, bounds: dict) -> dict:
        """Flips against the fp32 model on every set, each tested exactly; the check fails when
        any set's flip rate is shown to exceed the bound (Šidák-corrected over the sets)."""
        sets = self.evaluation.names()
        alpha = bounds["alpha"]
        per_set_alpha = gate.sidak_alpha(alpha, len(sets))
        max_rate = 1.0 - bounds["min_top1_agreement"]
        flipped = got.argmax(-1) != want.argmax(-1)
        tests = {
            s: gate.flip_test(
                int(flipped[self.evaluation.sets == s].sum()), int(np.sum(self.evaluation.sets == s)), max_rate, per_set_alpha
            )
            for s in sets
        }
        noise = gate.margin_noise(got, want)
        listed = gate.disagreements(got, want, self.evaluation.index, self.evaluation.sets, noise)
        near_ties = sum(d["near_tie"] for d in listed)
        passed = all(test.passed for test in tests.values())
        detail = "; ".join(
            f"{s} {test.flips}/{test.n} flips ({1 - test.rate:.2%} agree; {1 - per_set_alpha:.1%} CP [{test.lower:.2%}, {test.upper:.2%}], "
            f"p = {test.p_value:.3g})"
            for s, test in tests.items()
        )
        detail += f"; {near_ties} of {len(listed)} near-ties; fails when a flip rate > {max_rate:.2%} is shown at α = {alpha}"
        self.report.add(
            artifact,
            runtime,
            f"top-1 agreement [{task}]",
            passed,
            detail,
            numbers={"sets": {s: test.to_json() for s, test in tests.items()}, "alpha": alpha},
        )
        primary = tests.get(HELDOUT) or next(iter(tests.values()))
        return {
            "top1_agreement": round(1.0 - primary.rate, 6),
            "n": primary.n,
            "agreement": {s: test.to_json() for s, test in tests.items()},
            "margin_noise": round(noise, 6),
            "disagreements": listed,
        }

    def _fidelity(self, artifact: str, runtime: str, task: str, got: np.ndarray, want: np.ndarray, bounds: dict) -> dict:
        """Logit SQNR and the softmax's mean KL divergence on every image: n-robust numbers."""
        sqnr, kl = gate.logit_sqnr_db(got, want), gate.softmax_kl(got, want)
        floor, ceiling = bounds["min_logit_sqnr_db"], bounds["max_softmax_kl"]
        passed = (floor is None or sqnr >= floor) and (ceiling is None or kl <= ceiling)
        per_set = {
            s: {
                "logit_sqnr_db": round(gate.logit_sqnr_db(got[m], want[m]), 3),
                "softmax_kl": float(f"{gate.softmax_kl(got[m], want[m]):.4g}"),
            }
            for s in self.evaluation.names()
            for m in [self.evaluation.sets == s]
        }
        self.report.add(
            artifact,
            runtime,
            f"logit fidelity [{task}]",
            passed,
            f"logit SQNR {sqnr:.1f} dB"
            + (f" (bound ≥ {floor} dB)" if floor is not None else "")
            + f", softmax KL {kl:.2e}"
            + (f" (bound ≤ {ceiling:g})" if ceiling is not None else "")
            + f", n = {len(got)}",
            numbers={"logit_sqnr_db": round(sqnr, 3), "softmax_kl": float(f"{kl:.4g}"), "n": len(got)},
        )
        return {"logit_sqnr_db": round(sqnr, 3), "softmax_kl": float(f"{kl:.4g}"), "fidelity_by_set": per_set}

    def _collapse(self, artifact: str, runtime: str, task: str, got: np.ndarray, want: np.ndarray) -> dict:
        got_classes, want_classes = len(np.unique(got.argmax(-1))), len(np.unique(want.argmax(-1)))
        collapsed = got_classes == 1 and want_classes > 1
        self.report.add(
            artifact, runtime, f"no collapse [{task}]", not collapsed, f"{got_classes} distinct predictions (fp32 model: {want_classes})"
        )
        return {}

    def _accuracy(self, artifact: str, runtime: str, task: str, t: int, got: np.ndarray, want: np.ndarray, bounds: dict) -> dict:
        """Accuracy change on labelled held-out images (labelled ``--data`` images when there are
        none), decided by the exact McNemar test."""
        labels = self.evaluation.labels
        if labels is None:
            return {}
        labelled = labels[:, t] >= 0
        heldout = labelled & (self.evaluation.sets == HELDOUT)
        rows = heldout if heldout.any() else labelled & (self.evaluation.sets == FOLDER)
        if not rows.any():
            return {}
        truth = labels[rows, t]
        fp32_right, artifact_right = want[rows].argmax(-1) == truth, got[rows].argmax(-1) == truth
        test = gate.mcnemar_test(fp32_right, artifact_right, bounds["max_accuracy_drop"], bounds["alpha"])
        got_acc, want_acc = float(artifact_right.mean()), float(fp32_right.mean())
        self.report.add(
            artifact,
            runtime,
            f"accuracy drop [{task}]",
            test.passed,
            f"{test.drop_points:+.2f} points ({want_acc:.2%} → {got_acc:.2%}, n = {test.n}: "
            f"{test.worse} newly wrong, {test.better} newly right; McNemar p = {test.p_value:.3g}); "
            f"fails when significantly worse at α = {bounds['alpha']} and the drop > {bounds['max_accuracy_drop']}",
            numbers=test.to_json(),
        )
        return {
            "accuracy": round(got_acc, 6),
            "fp32_accuracy": round(want_acc, 6),
            "accuracy_change_points": round(-test.drop_points, 4),
            "accuracy_n": test.n,
            "mcnemar": test.to_json(),
        }
