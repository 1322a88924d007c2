"""GradNorm's behaviour on a small two-task problem with a real shared layer."""

import pytest
import torch
import torch.nn.functional as F

from dtconvert.gradnorm import GradNorm


def _run(loss_scale: tuple[float, float], steps: int = 60) -> GradNorm:
    torch.manual_seed(0)
    shared = torch.nn.Linear(8, 8)
    heads = torch.nn.ModuleList([torch.nn.Linear(8, 3), torch.nn.Linear(8, 3)])
    opt = torch.optim.SGD([*shared.parameters(), *heads.parameters()], lr=0.05)
    gradnorm = GradNorm(2, alpha=1.5, lr=0.05)
    x = torch.randn(64, 8)
    y = torch.randint(0, 3, (64, 2))
    for _ in range(steps):
        h = torch.tanh(shared(x))
        losses = torch.stack([F.cross_entropy(heads[t](h), y[:, t]) * loss_scale[t] for t in range(2)])
        total = gradnorm.step(losses, shared.weight)
        opt.zero_grad()
        total.backward()
        opt.step()
    return gradnorm


def test_weight_of_a_hundredfold_loss_falls():
    w = _run((100.0, 1.0)).weights.detach()
    assert w[0] < 0.2 * w[1], w
    assert w.sum().item() == pytest.approx(2.0, abs=1e-5)


def test_twin_equal_losses_keep_weights_near_one():
    # Without the imbalance the weights must not fall; this shows the check above can fail.
    w = _run((1.0, 1.0)).weights.detach()
    assert not (w[0] < 0.2 * w[1]), w  # the very predicate of the test above is false here
    assert (w - 1.0).abs().max() < 0.3, w


def test_weights_stay_positive_and_sum_to_task_count():
    gradnorm = GradNorm(3)
    with torch.no_grad():
        gradnorm.weights.copy_(torch.tensor([-1.0, 2.0, 5.0]))
    gradnorm.renormalise()
    assert (gradnorm.weights > 0).all()
    assert gradnorm.weights.sum().item() == pytest.approx(3.0)


def test_returned_loss_does_not_train_the_weights():
    shared = torch.nn.Linear(4, 4)
    gradnorm = GradNorm(2)
    h = shared(torch.randn(5, 4))
    losses = torch.stack([h.pow(2).mean(), h.abs().mean()])
    total = gradnorm.step(losses, shared.weight)
    gradnorm.weights.grad = None
    total.backward()
    assert gradnorm.weights.grad is None and shared.weight.grad is not None
