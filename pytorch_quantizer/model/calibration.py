"""Activation statistics of a ``QuantizedModel`` collected on calibration batches: what to observe
at each layer (where it would be quantized, before quantization), one pass over the batches, and
the reduction over batches into the statistics that fix each layer's grid."""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import replace

import torch

from pytorch_quantizer.maths.stats import TensorStats
from pytorch_quantizer.model.observers import ObservedLayer, StatsAccumulator, observing
from pytorch_quantizer.model.plans import ACTIVATION_AXIS, observed_layer


def batch_images(item) -> torch.Tensor:
    """The images of a batch that is either a tensor or an (images, labels, ...) sequence."""
    return item[0] if isinstance(item, (tuple, list)) else item


def observed_layers(quantized, per_channel: bool | None = None, image_averaged_range: bool = False
                    ) -> dict[str, ObservedLayer]:
    """What statistics collection must observe for this plan (per layer axis, clipping, bits);
    ``per_channel`` overrides the plan's granularity (a statistics file of the other kind) except
    at layers kept at 8 bits or without spatial extent, which are per tensor in both;
    ``image_averaged_range``: min / max averaged over each batch's images (the seed's -sba),
    except at layers kept at 8 bits (the seed's classifier takes the batch's)."""
    layers = {name: observed_layer(plan.activation, ACTIVATION_AXIS, image_averaged_range and not plan.kept_8bit,
                                   quantized.fused.fused_range(name))
              for name, plan in quantized.activation_plans().items()}
    if per_channel is None:
        return layers
    axis = ACTIVATION_AXIS if per_channel else None
    fixed = {name for name, plan in quantized.plans.items() if plan.per_tensor_only}
    return {name: layer if name in fixed else replace(layer, axis=axis) for name, layer in layers.items()}


def collect_statistics(quantized, batches, device: torch.device, also_other_granularity: bool = False,
                       image_averaged_range: bool = False
                       ) -> dict[str, StatsAccumulator] | tuple[dict[str, StatsAccumulator], dict[str, StatsAccumulator]]:
    """Run ``batches`` through the float model (the seed's; through the quantized one with
    on-the-fly statistics with the departure ``calibrate_quantized``) and observe each layer's
    activations where they would be quantized, before quantization.

    Returns {layer: StatsAccumulator} of the plan's granularity; with ``also_other_granularity``
    a pair (the plan's, the other one's: per tensor for a per-channel plan and vice versa),
    observed in the same pass. ``image_averaged_range``: the seed's -sba."""
    previous = quantized.activation_stats
    quantized.activation_stats = None
    per_channel = any(layer.axis is not None for layer in observed_layers(quantized).values())
    variants = [observed_layers(quantized, None, image_averaged_range)]
    if also_other_granularity:
        variants.append(observed_layers(quantized, not per_channel, image_averaged_range))
    model = nullcontext() if quantized.config.departures.calibrate_quantized else quantized.float_model()
    try:
        with ExitStack() as stack:
            stack.enter_context(model)
            collected = [stack.enter_context(observing(quantized.model, layers, quantized.at_output,
                                                       quantized.fused.observed))
                         for layers in variants]
            with torch.inference_mode():
                for item in batches:
                    quantized.model(batch_images(item).to(device))
    finally:
        quantized.activation_stats = previous
    return tuple(collected) if also_other_granularity else collected[0]


def reduced(accumulators: dict[str, StatsAccumulator], kind: str, kept: set[str]) -> dict[str, TensorStats]:
    """Each layer's statistics over the calibration batches: ``kind`` (mean or max of each
    statistic), and their extremes at layers kept at 8 bits (the seed's classifier output)."""
    return {name: accumulator.reduce("max" if name in kept else kind) for name, accumulator in accumulators.items()
            if accumulator.batches}  # layers that calibration never reached (an eval-mode auxiliary head) have none


MEASURED_WITHIN = "within the fused activation's range"


def statistics_recipe(config, image_averaged_range: bool | None = None) -> dict:
    """The parts of a recipe that collected statistics depend on, as plain data (a file of them
    serves only a run with the same): the layers kept at 8 bits (observed per tensor) and in float,
    the bits of clipping methods measured on the values (marked as measured within a fused
    activation's range: files measured before that was so are refused), and, where statistics are
    collected through the quantized model, its weights' recipe; recorded too, how min / max were taken (the seed's
    image-averaged ranges; None for a run that uses statistics and so does not choose it). The
    granularity is not among them: one collection writes both."""
    from pytorch_quantizer.maths.clipping import get_clipping
    from pytorch_quantizer.quantizers.config import config_as_dict

    activations = config.activations
    measured = activations is not None and get_clipping(activations.clipping).needs_values
    through_quantized = config.departures.calibrate_quantized
    return {"image_averaged_range": image_averaged_range, "keep_8bit": sorted(config.keep_8bit),
            "keep_fp": sorted(config.keep_fp),
            "measured_clipping": [activations.clipping, activations.bits, MEASURED_WITHIN] if measured else None,
            "weights": config_as_dict(config)["weights"] if through_quantized else None,
            "calibrate_quantized": through_quantized}
