"""Assertions shared by the per-target tests, with the bounds from dtconvert.tolerances."""

from dtconvert.metrics import accuracy, max_abs_error, top1_agreement
from dtconvert.tolerances import tolerance


def assert_wire_close(target: str, precision: str, got, want) -> None:
    bound = tolerance(target, precision)["wire_max_abs"]
    error = max_abs_error(got, want)
    assert error <= bound, f"{target} {precision}: wire max abs error {error:.3g} > {bound}"


def assert_end_to_end(target: str, precision: str, logits: dict, reference) -> None:
    bounds = tolerance(target, precision)
    for t, task in enumerate(reference.ckpt["tasks"]):
        name = task["name"]
        agreement = top1_agreement(logits[name], reference.logits[name])
        drop = 100 * (accuracy(reference.logits[name], reference.labels[:, t]) - accuracy(logits[name], reference.labels[:, t]))
        assert agreement >= bounds["min_top1_agreement"], f"{target} {precision} {name}: top-1 agreement {agreement:.4f}"
        assert drop <= bounds["max_accuracy_drop"], f"{target} {precision} {name}: accuracy drop {drop:.2f} points"
