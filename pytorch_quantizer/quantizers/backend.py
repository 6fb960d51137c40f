"""The implementation behind the quantization primitives: fused ``ptq_kernels`` ops or pure PyTorch.

This module is the only way the library reaches the compiled kernels (``kernels/``):

    set_backend("auto")       the kernels when they are built and load, else the reference
                              (one logged warning)
    set_backend("kernels")    the kernels, or QuantizationError saying how to build them
    set_backend("reference")  pytorch_quantizer.maths.primitives / stats (pure PyTorch)

Nothing is built or loaded at import; the first call that needs the kernels loads an already built
library (milliseconds) and never compiles. The functions keep the reference's signatures, with
``generator_seed`` in place of a generator: a seed selects stochastic rounding, floor(v + u), with u
drawn inside the kernel from (seed, memory offset of the element); None rounds to nearest (ties to
even). Deterministic results of the kernels equal the reference bit for bit (up to the sign of a
zero code); stochastic ones are reproducible per seed but differ from the reference's torch.rand.

Statistics come from one pass (min, max, sum, sum of squares in double) and a second pass for
b = E|x - mean|: mean = sum / n, std = sqrt(max(sumsq / n - mean^2, 0)).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pytorch_quantizer.maths import primitives, qdrop, soft_rounding, stats
from pytorch_quantizer.maths.weight_grid import Grid
from pytorch_quantizer.errors import QuantizationError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "kernels", "reference")
BUILD_HINT = "build them with `bash build_all.sh` or `python kernels/build.py`"


@dataclass
class _State:
    requested: str = "auto"
    resolved: str | None = None  # "kernels" or "reference" once resolved
    cuda_kernels: bool | None = None  # whether the CUDA kernels loaded (asked on the first CUDA tensor)


_state = _State()


def set_backend(name: str) -> None:
    """Choose "auto", "kernels" or "reference"; takes effect on the next call."""
    if name not in BACKENDS:
        raise QuantizationError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    _state.requested, _state.resolved, _state.cuda_kernels = name, None, None


def active_backend() -> str:
    """"kernels" or "reference" (resolving "auto" loads the built kernels if there are any)."""
    if _state.resolved is None:
        _state.resolved = _resolve(_state.requested)
    return _state.resolved


def _load(device_type: str) -> str | None:
    """Load the built kernels for a device type; None on success, else why not."""
    try:
        from kernels import build
    except ImportError as error:
        return f"the kernels package is not importable ({error})"
    try:
        loaded = build.load_cuda() if device_type == "cuda" else build.load_cpu()
    except (OSError, RuntimeError) as error:
        return f"loading failed: {error}"
    return None if loaded else f"the {device_type.upper()} extension is not built or is out of date"


def _unavailable(reason: str) -> str:
    if _state.requested == "kernels":
        raise QuantizationError(f"backend 'kernels' requested but {reason}; {BUILD_HINT}")
    log.warning("ptq_kernels unavailable (%s): using the pure-PyTorch reference; %s", reason, BUILD_HINT)
    return "reference"


def _resolve(requested: str) -> str:
    if requested == "reference":
        return "reference"
    reason = _load("cpu")
    if reason is not None:
        return _unavailable(reason)
    log.info("quantization backend: kernels (ptq_kernels)")
    return "kernels"


def _use_kernels(x: torch.Tensor) -> bool:
    if active_backend() != "kernels" or x.device.type not in ("cpu", "cuda"):
        return False
    if x.device.type == "cuda":
        if _state.cuda_kernels is None:
            reason = _load("cuda")
            if reason is not None:
                _unavailable(reason)  # raises for "kernels", warns once for "auto"
            _state.cuda_kernels = reason is None
        return _state.cuda_kernels
    return True


def _axis(x: torch.Tensor, axis: int | None) -> int:
    """The ops' axis: -1 per tensor, else the non-negative channel dimension."""
    if axis is None:
        return -1
    if not -x.dim() <= axis < x.dim():
        raise QuantizationError(f"axis {axis} is out of range for a {x.dim()}-d tensor")
    return axis % x.dim()


def _channel_vectors(x: torch.Tensor, axis: int, *values) -> list[torch.Tensor]:
    """float32 1-D parameter vectors of one entry per channel (a scalar is repeated)."""
    channels = 1 if axis < 0 else x.shape[axis]
    vectors = []
    for value in values:
        vector = torch.as_tensor(value, dtype=torch.float32, device=x.device).reshape(-1)
        vectors.append(vector.expand(channels).contiguous() if vector.numel() == 1 else vector.contiguous())
    return vectors


def _generator(x: torch.Tensor, seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=x.device).manual_seed(seed)


def _quantize(op, x, p0, p1, p2, axis, seed):
    axis = _axis(x, axis)
    vectors = _channel_vectors(x, axis, p0, p1, p2)
    return op(x.float(), *vectors, axis, 0 if seed is None else seed, seed is not None)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: torch.Tensor,
                  axis: int | None = None, generator_seed: int | None = None) -> torch.Tensor:
    """x_hat = (clamp(round(x * (1/s)) + z, 0, qmax) - z) * s, per tensor or per channel of ``axis``."""
    if not _use_kernels(x):
        return primitives.fake_quantize(x, scale, zero_point, qmax, axis, _generator(x, generator_seed))
    return _quantize(torch.ops.ptq_kernels.fake_quant, x, scale, zero_point, qmax, axis, generator_seed).to(x.dtype)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: torch.Tensor,
                   axis: int | None = None, generator_seed: int | None = None) -> torch.Tensor:
    """Integer codes q = clamp(round(x * (1/s)) + z, 0, qmax) as float32."""
    if not _use_kernels(x):
        return primitives.quantize_codes(x, scale, zero_point, qmax, axis, _generator(x, generator_seed))
    return _quantize(torch.ops.ptq_kernels.quant_codes, x, scale, zero_point, qmax, axis, generator_seed)


def fake_quantize_mid_tread(x: torch.Tensor, center: torch.Tensor, alpha: torch.Tensor, bins: torch.Tensor,
                            axis: int | None = None, generator_seed: int | None = None) -> torch.Tensor:
    """x_hat = c + clamp(round((x - c) / step), -K, K) * step, K = floor((B - 1) / 2), step = alpha / K."""
    if not _use_kernels(x):
        return primitives.fake_quantize_mid_tread(x, center, alpha, bins, axis, _generator(x, generator_seed))
    return _quantize(torch.ops.ptq_kernels.fake_quant_mid_tread, x, center, alpha, bins, axis,
                     generator_seed).to(x.dtype)


def mid_tread_codes(x: torch.Tensor, center: torch.Tensor, alpha: torch.Tensor, bins: torch.Tensor,
                    axis: int | None = None, generator_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed codes q in [-K, K] and the step (alpha / K; 1 where K = 0 or alpha <= 0), as the reference."""
    if not _use_kernels(x):
        return primitives.mid_tread_codes(x, center, alpha, bins, axis, _generator(x, generator_seed))
    codes = _quantize(torch.ops.ptq_kernels.mid_tread_codes, x, center, alpha, bins, axis, generator_seed)
    half_levels = primitives.mid_tread_half_levels(bins).to(x.device)
    step = torch.where((half_levels > 0) & (alpha > 0), alpha / torch.clamp(half_levels, min=1.0), torch.ones_like(alpha))
    return codes, step


def threshold_quantize(x: torch.Tensor, scale: torch.Tensor, thresholds: torch.Tensor, values: torch.Tensor,
                       axis: int | None = None) -> torch.Tensor:
    """Level-set quantization x_hat = s * values[#{j : t_j <= x / s}] (see primitives.threshold_quantize),
    per tensor or with one scale per channel of ``axis``; thresholds and values are shared by all channels."""
    if not _use_kernels(x):
        return primitives.threshold_quantize(x, scale, thresholds, values, axis)
    op_axis = _axis(x, axis)
    (scale_vector,) = _channel_vectors(x, op_axis, scale)
    tables = [torch.as_tensor(t, dtype=torch.float32, device=x.device).contiguous() for t in (thresholds, values)]
    return torch.ops.ptq_kernels.threshold_quant(x.float(), scale_vector, *tables, op_axis).to(x.dtype)


def quantize_to_levels(x: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor,
                       axis: int | None = None) -> torch.Tensor:
    """Nearest-level quantization s * l_k, l_k the level nearest to x / s (a tie goes to the upper level):
    ``threshold_quantize`` with the sorted levels and their midpoints as thresholds."""
    levels = torch.sort(torch.as_tensor(levels, dtype=torch.float32, device=x.device).reshape(-1)).values
    return threshold_quantize(x, scale, primitives.midpoint_thresholds(levels), levels, axis)


def qdrop_select(x: torch.Tensor, q: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """QDrop's choice: x where u < p, else q, u drawn per element from (seed, its memory offset) as in
    ``maths.qdrop`` (the kernels and the reference agree bit for bit); in x's dtype."""
    if not _use_kernels(x):
        return qdrop.qdrop_select(x, q, p, seed).to(x.dtype)
    return torch.ops.ptq_kernels.qdrop_select(x.float(), q.float(), float(p), int(seed)).to(x.dtype)


def depthwise_kernel_serves(x: torch.Tensor) -> bool:
    """Whether ``depthwise_weight_grad`` runs the kernel for ``x`` (a CPU tensor, kernels loaded)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and _use_kernels(x)


def reference_depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel_size, stride, padding,
                                    dilation) -> torch.Tensor:
    """PyTorch's weight gradient of a depthwise conv2d (groups = channels), [channels, 1, KH, KW]."""
    weight = x.new_empty((x.shape[1], 1, *kernel_size))
    return torch.ops.aten.convolution_backward(grad, x, weight, None, list(stride), list(padding), list(dilation),
                                               False, [0, 0], x.shape[1], [False, True, False])[1]


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel_size, stride, padding,
                          dilation) -> torch.Tensor:
    """dW[c, 0, i, j] = sum over n, h, w of x[n, c, h s - p + i d, w s - p + j d] grad[n, c, h, w] of a
    depthwise conv2d: the kernel on the CPU (its samples summed in order, whatever the threads),
    else the reference; equal to rounding."""
    if not depthwise_kernel_serves(x):
        return reference_depthwise_weight_grad(grad, x, kernel_size, stride, padding, dilation)
    return torch.ops.ptq_kernels.depthwise_weight_grad(grad.float(), x.float(), list(kernel_size), list(stride),
                                                       list(padding), list(dilation))


class _SoftRound(torch.autograd.Function):
    """The kernels' soft rounding with their one-pass gradient with respect to the logits."""

    @staticmethod
    def forward(ctx, weight, logits, scale, zero_point, qmax, axis, beta):
        ctx.save_for_backward(weight, logits, scale, zero_point, qmax)
        ctx.axis, ctx.beta = axis, beta
        return torch.ops.ptq_kernels.soft_round(weight, logits, scale, zero_point, qmax, axis, beta)

    @staticmethod
    def backward(ctx, grad_rounded, grad_penalty):
        weight, logits, *grid = ctx.saved_tensors
        grad_rounded = torch.zeros_like(weight) if grad_rounded is None else grad_rounded
        grad_penalty = weight.new_zeros(()) if grad_penalty is None else grad_penalty.float()
        grad = torch.ops.ptq_kernels.soft_round_backward(grad_rounded.float(), grad_penalty, weight, logits, *grid,
                                                         ctx.axis, ctx.beta)
        return None, grad, None, None, None, None, None


def soft_round(weight: torch.Tensor, logits: torch.Tensor, grid: Grid, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaRound's soft-rounded weight W~ and its summed rounding penalty (0 for beta <= 0),
    differentiable in ``logits`` (``maths.soft_rounding``; the kernels agree with it to float32
    rounding of sigmoid, pow and the penalty's sum). ``grid`` per tensor or per channel of axis 0.

    The fused kernels run on CUDA only: on the CPU their scalar expf and powf make one forward and
    backward of a 368k-weight layer slower (8.5 ms) than ATen's vectorised ops in sequence (5-7 ms,
    2 threads); the CPU kernel is there to test the per-element maths CUDA shares with it."""
    if weight.device.type != "cuda" or not _use_kernels(weight) or weight.dtype != torch.float32:
        return soft_rounding.soft_round(weight, logits, grid, beta)
    return fused_soft_round(weight, logits, grid, beta)


def fused_soft_round(weight: torch.Tensor, logits: torch.Tensor, grid: Grid,
                     beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``soft_round`` by the ``ptq_kernels`` ops on the weight's device, whichever it is (float32)."""
    axis = 0 if grid.scale.dim() else -1
    vectors = _channel_vectors(weight, axis, grid.scale, grid.zero_point, grid.qmax)
    return _SoftRound.apply(weight, logits.float(), *vectors, axis, float(beta))


def reference_code_histogram(codes: torch.Tensor, low: int, num_bins: int, axis: int | None = None) -> torch.Tensor:
    """Counts of round(code) - low in [0, num_bins) (others are not counted): shape (num_bins,),
    or (channels, num_bins) per channel of ``axis``; int64."""
    axis = None if axis is None else _axis(codes, axis)
    rows = primitives.channels_first(codes.detach().float(), axis)
    values = torch.round(rows) - low
    inside = (values >= 0) & (values < num_bins)
    slots = torch.arange(rows.shape[0], device=codes.device).unsqueeze(1) * num_bins + values.clamp(0, num_bins - 1).long()
    counts = torch.bincount(slots[inside], minlength=rows.shape[0] * num_bins)
    return counts if axis is None else counts.reshape(rows.shape[0], num_bins)


def code_histogram(codes: torch.Tensor, low: int, num_bins: int, axis: int | None = None) -> torch.Tensor:
    """Histogram of integer codes (see ``reference_code_histogram``), with no host synchronisation."""
    if not _use_kernels(codes):
        return reference_code_histogram(codes, low, num_bins, axis)
    return torch.ops.ptq_kernels.code_histogram(codes.detach().float(), low, num_bins, _axis(codes, axis))


def compute_stats(x: torch.Tensor, axis: int | None = None) -> stats.TensorStats:
    """min, max, mean, std (population), b = E|x - mean| and the fraction of values > 0 per channel
    of ``axis`` (or per tensor); the last one is a plain torch reduction on both backends."""
    if not _use_kernels(x):
        return stats.compute_stats(x, axis)
    values = x.detach().float()
    op_axis = _axis(values, axis)
    minimum, maximum, total, total_sq = torch.ops.ptq_kernels.channel_stats(values, op_axis)
    count = values.numel() / max(1, minimum.numel())
    mean = total / count
    std = torch.clamp(total_sq / count - mean * mean, min=0.0).sqrt()
    b = torch.ops.ptq_kernels.channel_mean_abs_dev(values, mean, op_axis)
    return stats.TensorStats(min=minimum.float(), max=maximum.float(), mean=mean.float(), std=std.float(), b=b.float(),
                             positive_fraction=stats.positive_fraction(values, axis))
