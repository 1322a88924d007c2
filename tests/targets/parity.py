"""Assertions shared by the per-target tests, with the bounds from dtconvert.tolerances."""

from dtconvert import gate
from dtconvert.metrics import max_abs_error
from dtconvert.tolerances import tolerance


def assert_wire_close(target: str, precision: str, got, want) -> None:
    bound = tolerance(target, precision)["wire_max_abs"]
    error = max_abs_error(got, want)
    assert error <= bound, f"{target} {precision}: wire max abs error {error:.3g} > {bound}"


def assert_end_to_end(target: str, precision: str, logits: dict, reference) -> None:
    """The gate's own decisions (dtconvert.gate) on the held-out images: the exact flip test and
    the exact McNemar test, at the bounds and α of the tolerance table."""
    bounds = tolerance(target, precision)
    for t, task in enumerate(reference.ckpt["tasks"]):
        name = task["name"]
        got, want = logits[name], reference.logits[name]
        flips = int((got.argmax(-1) != want.argmax(-1)).sum())
        flip_test = gate.flip_test(flips, len(want), 1 - bounds["min_top1_agreement"], bounds["alpha"])
        assert flip_test.passed, (
            f"{target} {precision} {name}: top-1 agreement {1 - flip_test.rate:.4f}, {flips} of {len(want)} flipped, p = {flip_test.p_value:.3g}"
        )
        truth = reference.labels[:, t]
        mcnemar = gate.mcnemar_test(want.argmax(-1) == truth, got.argmax(-1) == truth, bounds["max_accuracy_drop"], bounds["alpha"])
        assert mcnemar.passed, f"{target} {precision} {name}: accuracy {mcnemar.drop_points:+.2f} points worse, p = {mcnemar.p_value:.3g}"
        sqnr = gate.logit_sqnr_db(got, want)
        assert sqnr >= bounds["min_logit_sqnr_db"], f"{target} {precision} {name}: logit SQNR {sqnr:.1f} dB"
