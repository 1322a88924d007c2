"""GradNorm (Chen et al., ICML 2018): adaptive loss weights for multi-task training.

Each task i has a learnable weight w_i. At every step, with W the last shared layer:

    G_i   = ‖∇_W w_i L_i‖₂                      gradient norm of the weighted task loss
    Ḡ     = mean_i G_i
    r_i   = (L_i / L_i(0)) / mean_j (L_j / L_j(0))  relative inverse training rate
    L_gn  = Σ_i | G_i − Ḡ · r_i^α |              (Ḡ · r_i^α held constant)

L_gn is minimised with respect to the weights only, which are then renormalised to sum to
the number of tasks. Tasks whose gradients dominate lose weight; tasks that train slowly
(large r_i) gain weight.
"""

from __future__ import annotations

import torch
from torch import nn


class GradNorm(nn.Module):
    initial_losses: torch.Tensor  # a buffer: registered in __init__, typed here for the checker

    def __init__(self, num_tasks: int, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.alpha = alpha
        self.weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.zeros(num_tasks))
        self._initialised = False
        self.optimizer = torch.optim.Adam([self.weights], lr=lr)

    def step(self, losses: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """Update the task weights from this step's per-task losses; return Σ w_i L_i to backprop.

        ``losses`` is the (num_tasks,) vector of task losses, still attached to the graph;
        ``shared`` the weight of the last shared layer. The returned loss uses the weights
        from before this update, detached, so the model's backward never touches them.
        """
        weights_now = self.weights.detach().clone()
        if not self._initialised:
            self.initial_losses.copy_(losses.detach())
            self._initialised = True
        # ∇_W (w_i L_i) = w_i ∇_W L_i for w_i > 0: one plain backward per task to W, no double backward.
        norms = torch.stack([torch.autograd.grad(loss, shared, retain_graph=True)[0].norm() for loss in losses]).detach()
        grad_norms = self.weights * norms
        mean_norm = grad_norms.mean().detach()
        loss_ratio = losses.detach() / self.initial_losses.clamp_min(1e-12)
        inverse_rate = loss_ratio / loss_ratio.mean()
        target = (mean_norm * inverse_rate**self.alpha).detach()
        gradnorm_loss = (grad_norms - target).abs().sum()
        self.optimizer.zero_grad(set_to_none=True)
        (self.weights.grad,) = torch.autograd.grad(gradnorm_loss, [self.weights])
        self.optimizer.step()
        self.renormalise()
        return (weights_now * losses).sum()

    @torch.no_grad()
    def renormalise(self) -> None:
        """Keep weights positive and summing to the number of tasks."""
        self.weights.clamp_(min=1e-3)
        self.weights.mul_(self.num_tasks / self.weights.sum())

    def current(self) -> list[float]:
        return [round(float(w), 4) for w in self.weights.detach()]
