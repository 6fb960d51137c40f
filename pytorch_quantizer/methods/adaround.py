"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML
2020): learn, per weight, whether to round down or up on the layer's GEMMLOWP grid, minimising the
layer-output error on calibration inputs.

With the grid's scale s, zero point z and top code qmax (per tensor or per output channel), and a
learned logit V per weight:

    h(V)   = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1
    W~     = (clamp(floor(W / s) + h(V) + z, 0, qmax) - z) s
    loss   = mean_(samples, positions) || f(x_q; W~) - f(x; W) ||^2_channels
             + lambda sum_i (1 - |2 h(V_i) - 1|^beta)

(f the layer, x its float input, x_q its input in the quantized model). The regulariser is off for
the first ``WARMUP`` of the iterations, then beta decays linearly from 20 to 2, which drives every
h(V) to 0 or 1; the learned rounding is then h = 1{V >= 0}, so each weight lands on one of its two
neighbouring grid points.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from pytorch_quantizer.maths.soft_rounding import GAMMA, ZETA, rectified_sigmoid
from pytorch_quantizer.maths.weight_grid import Grid, nearest_rounding, rounded_weight
from pytorch_quantizer.methods.grouped_steps import DataShare, group_seed, grouped_gradients
from pytorch_quantizer.model.depthwise_gradients import DepthwiseWeightGradients
from pytorch_quantizer.quantizers import backend

WARMUP = 0.2
BETA_START, BETA_END = 20.0, 2.0
REGULARISATION = 0.01
LEARNING_RATE = 1e-2
STEP_SIZE_LEARNING_RATE = 4e-5   # BRECQ's and QDrop's Adam rate for activation step sizes


def initial_logits(weight: torch.Tensor, grid: Grid) -> torch.Tensor:
    """V with h(V) equal to the fractional part of W / s (the soft rounding starts at W itself)."""
    scale, _, _ = grid.shaped(weight)
    scaled = weight.float() * (1.0 / scale)
    rest = scaled - torch.floor(scaled)
    probability = torch.clamp((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    return torch.log(probability / (1 - probability))


def beta_at(step: int, steps: int) -> float | None:
    """None during the warm-up (no regulariser), then linear from BETA_START to BETA_END."""
    warmup = int(WARMUP * steps)
    if step < warmup:
        return None
    progress = (step - warmup) / max(steps - warmup - 1, 1)
    return BETA_START + (BETA_END - BETA_START) * min(progress, 1.0)


@dataclass(frozen=True)
class RoundingResult:
    """``up``: the learned 0 / 1 rounding per weight; errors: mean squared layer-output error on the
    calibration inputs with the nearest and with the learned rounding; ``undecided``: the fraction of
    weights whose soft rounding h(V) ended strictly between 0 and 1."""

    up: torch.Tensor
    nearest_error: float
    learned_error: float
    losses: tuple[float, ...]
    undecided: float


def layer_output(module: nn.Module, weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The module's output with ``weight`` in place of its own (any Conv2d / Linear subclass)."""
    return torch.func.functional_call(module, {"weight": weight}, (inputs,))


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||f~ - f||^2 summed over the channels (dim 1), averaged over samples and positions: the
    ``sample_loss_sum`` over samples x positions."""
    return sample_loss_sum(output, target) * (output.shape[1] / output.numel())


def output_error(output: Callable, weights: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
                 batch: int, share: DataShare | None = None) -> float:
    """Mean squared error of ``output(weights, inputs)`` against ``targets``, in batches (over every
    process's images with ``share``)."""
    with torch.no_grad():
        total = sum(float((output(weights, inputs[start:start + batch]) - targets[start:start + batch]).square().sum())
                    for start in range(0, len(inputs), batch))
    if share is None:
        return total / targets.numel()
    summed = share.sum(torch.tensor([total, float(targets.numel())], dtype=torch.float64))
    return float(summed[0] / summed[1])


def sample_loss_sum(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The summed loss of the samples of a batch, in the units of ``reconstruction_loss`` times the
    batch's positions: sum over samples and positions of the channel-summed squared error (one fused
    pass forward and one backward)."""
    return nn.functional.mse_loss(output, target, reduction="sum")


def learning_layout(tensor: torch.Tensor) -> torch.Tensor:
    """Images and feature maps in channels-last memory order for learning: the CPU convolutions
    (oneDNN) and their backward passes run about 1.2-1.6 times faster on it (measured on
    EfficientNet-Lite0's blocks, ``analysis/bench_learning_step.py``); the values are the same."""
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def learn_soft_roundings(weights: dict[str, torch.Tensor], grids: dict[str, Grid], output: Callable,
                         inputs: torch.Tensor, targets: torch.Tensor, iterations: int, batch: int, seed: int = 0,
                         regularisation: float = REGULARISATION, learning_mode: Callable = nullcontext,
                         share: DataShare | None = None, step_sizes: list[torch.Tensor] | None = None,
                         step_size_lr: float | None = None, correction: Callable | None = None
                         ) -> tuple[dict[str, RoundingResult], tuple[float, ...]]:
    """Learn the roundings of several float ``weights`` together: ``output(rounded weights, inputs)``
    is the layer or block computed with them, fitted to ``targets`` (its float output on float
    inputs) from ``inputs`` (its inputs in the quantized model). ``learning_mode()`` is entered for
    the optimisation only (the errors are measured outside it); a ``reseed(seed)`` of what it yields
    is called before each group's pass. With ``share`` each step's gradient is summed group by group
    over the images of every process (``grouped_steps``): every process learns the rounding of one
    process with the same groups. ``step_sizes``
    (tensors requiring gradients, used by ``output`` inside ``learning_mode``) are learned alongside
    with Adam at ``step_size_lr`` (None: ``STEP_SIZE_LEARNING_RATE``), annealed to 0 over the steps
    along a cosine (lr_t = lr (1 + cos(pi t / iterations)) / 2), as BRECQ and QDrop do.
    ``correction(float weight, rounded weight)`` is what the model does to a rounded weight (``weights.weight_correction``: -bcw's mean correction), applied to
    the soft and the hard roundings alike. Returns each weight's result (the errors are those of the
    whole output) and the loss of every step."""
    weights = {name: weight.detach() for name, weight in weights.items()}
    inputs, targets = learning_layout(inputs), learning_layout(targets)
    logits = {name: initial_logits(weight, grids[name]).requires_grad_(True) for name, weight in weights.items()}
    optimisers = [torch.optim.Adam(list(logits.values()), lr=LEARNING_RATE)]
    schedules = []
    if step_sizes:
        optimisers.append(torch.optim.Adam(step_sizes, lr=step_size_lr or STEP_SIZE_LEARNING_RATE))
        schedules.append(torch.optim.lr_scheduler.CosineAnnealingLR(optimisers[-1], T_max=iterations, eta_min=0.0))
    generator = torch.Generator().manual_seed(seed)
    total = share.total if share is not None else len(inputs)
    positions = targets[0].numel() // targets.shape[1]

    def corrected(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return values if correction is None else {name: correction(weights[name], value)
                                                  for name, value in values.items()}

    def rounded(roundings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return corrected({name: rounded_weight(weight, grids[name], roundings[name]) for name, weight in weights.items()})

    losses = []
    with learning_mode() as mode, DepthwiseWeightGradients():
        reseed = getattr(mode, "reseed", None)
        for step in range(iterations):
            chosen = torch.randint(total, (min(batch, total),), generator=generator)
            beta = beta_at(step, iterations)
            soft = {name: backend.soft_round(weight, logits[name], grids[name], beta if beta is not None else 0.0)
                    for name, weight in weights.items()}
            values = corrected({name: value for name, (value, _) in soft.items()})
            penalty = regularisation * sum(term for _, term in soft.values()) if beta is not None else None
            for optimiser in optimisers:
                optimiser.zero_grad()
            if share is None:
                loss = reconstruction_loss(output(values, inputs[chosen]), targets[chosen])
                loss = loss + penalty if penalty is not None else loss
                loss.backward()
                losses.append(float(loss.detach()))
            else:
                def before_group(group: int, step: int = step) -> None:
                    if reseed is not None:
                        reseed(group_seed(seed, step, group))

                losses.append(_grouped_step(output, values, penalty, inputs, targets, chosen, share, step_sizes or [],
                                            positions, before_group))
            for optimiser in optimisers:
                optimiser.step()
            for schedule in schedules:
                schedule.step()
    ups = {name: (value.detach() >= 0).float() for name, value in logits.items()}
    nearest = {name: nearest_rounding(weight, grids[name]) for name, weight in weights.items()}
    nearest_error = output_error(output, rounded(nearest), inputs, targets, batch, share)
    learned_error = output_error(output, rounded(ups), inputs, targets, batch, share)
    history = tuple(losses)  # one object shared by the weights learned together
    results = {}
    for name, value in logits.items():
        soft = rectified_sigmoid(value.detach())
        results[name] = RoundingResult(ups[name], nearest_error, learned_error, history,
                                       float(((soft > 0) & (soft < 1)).float().mean()))
    return results, history


def _grouped_step(output: Callable, values: dict[str, torch.Tensor], penalty: torch.Tensor | None,
                  inputs: torch.Tensor, targets: torch.Tensor, chosen: torch.Tensor, share: DataShare,
                  step_sizes: list[torch.Tensor], positions: int, before_group: Callable[[int], None]) -> float:
    """The gradients of one step over ``share``'s groups (``grouped_steps``; ``before_group(j)`` runs
    before group j's pass) put in the learned tensors' ``grad``, the regulariser's added after the
    sum on every process; returns the step's loss. The soft weights enter each group's pass
    detached, so the soft rounding's backward runs once, on the summed gradient."""
    detached = {name: value.detach().requires_grad_(True) for name, value in values.items()}
    scale = 1.0 / (len(chosen) * positions)

    def loss_of(mine: torch.Tensor) -> torch.Tensor:
        return sample_loss_sum(output(detached, inputs[mine]), targets[mine]) * scale

    gradients, loss = grouped_gradients(loss_of, chosen, share, [*detached.values(), *step_sizes], before_group)
    for step_size, gradient in zip(step_sizes, gradients[len(detached):]):
        step_size.grad = gradient
    tensors, grads = list(values.values()), gradients[:len(detached)]
    if penalty is not None:
        tensors, grads = [*tensors, penalty], [*grads, torch.ones_like(penalty)]
        loss += float(penalty.detach())
    torch.autograd.backward(tensors, grads)
    return loss


def learn_rounding(module: nn.Module, weight: torch.Tensor, grid: Grid, inputs: torch.Tensor,
                   targets: torch.Tensor, iterations: int, batch: int, seed: int = 0,
                   regularisation: float = REGULARISATION, share: DataShare | None = None,
                   correction: Callable | None = None) -> RoundingResult:
    """Learn the rounding of one layer's float ``weight`` (``learn_soft_roundings`` for one weight)."""
    results, _ = learn_soft_roundings({"weight": weight}, {"weight": grid},
                                      lambda weights, batch_inputs: layer_output(module, weights["weight"], batch_inputs),
                                      inputs, targets, iterations, batch, seed, regularisation, share=share,
                                      correction=correction)
    return results["weight"]
