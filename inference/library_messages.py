"""The CLI's wording of the library's errors: the library names configuration fields
(``weights.per_channel``), the CLI the flags that set them (``-pcq_w``). Keyed by the error's
``code``; an error without a wording here is printed as the library words it."""
from __future__ import annotations

from pytorch_quantizer.errors import QuantizationError

KEEP_FLAGS = {"keep_8bit": "--keep-8bit", "keep_fp": "--keep-fp"}

WORDING = {
    "allocation_needs_per_channel": lambda e: "bit/bin allocation is per channel: add per-channel quantization "
                                              "(-pcq_a / -pcq_w)",
    "allocation_clipping": lambda e: "bit/bin allocation takes min / max ranges or ACIQ clipping (each channel clipped "
                                     f"with the constant of its own bits): use -c no, laplace or gaus (not {e.detail})",
    "bins_need_target": lambda e: "bin allocation (mid-tread) needs a target: -bata / -batw",
    "target_needs_allocation": lambda e: "an allocation target (-bata / -batw) needs bit allocation (-baa / -baw)",
    "kind_calibrates_own_scale": lambda e: f"{e.detail} quantization calibrates its own scale: drop the clipping "
                                           "(-c / -wc) and allocation flags, or use intN",
    "correction_needs_weights": lambda e: "weight bias/variance correction (-bcw/-vcw) needs quantized weights (-qw intN)",
    "kmeans_allocation": lambda e: "k-means weights take no bit allocation: drop -baw/-batw or use -qw intN",
    "bca_needs_quantization": lambda e: "activation bias correction (-bca) needs quantization (--qtype / -qw)",
    "bca_online_at_input": lambda e: "-bca (the seed's online correction) corrects Conv outputs: quantize activations "
                                     "at outputs, or measure it on calibration images with --bca-folded",
    "family_activation_per_channel": lambda e: f"{e.detail} activations are quantized per tensor: drop -pcq_a",
    "family_activation_point": lambda e: f"{e.detail} activations quantize what each GEMM reads: use "
                                         "--act-quant-point input (the default for this kind)",
    "bca_family": lambda e: "-bca corrects GEMMLOWP activations: drop it or use --qtype intN",
    "per_layer_kind_per_channel": lambda e: f"{e.detail} weights are defined per layer: drop -pcq_w",
    "statistics_lack_clipping": lambda e: f"clipping {e.detail!r} needs statistics measured with it; collect them "
                                          f"with -c {e.detail}",
    "layer_without_statistics": lambda e: f"layer {e.detail} runs but has no statistics (calibration never reached "
                                          "it); collect them again with -sm collect (same model and flags)",
    "pattern_matches_no_layer": lambda e: f"{KEEP_FLAGS[e.field]} {e.detail}; pass a layer name or an fnmatch "
                                          "pattern such as 'layer1.*'",
    "everything_float": lambda e: f"--keep-fp {e.detail} leaves every Conv2d / Linear layer in float, so nothing is "
                                  "quantized; narrow the patterns, or drop --qtype / -qw for an FP32 run",
    "equalize_failed": lambda e: f"--equalize: {e.detail}; run without --equalize",
    "export_nothing_quantized": lambda e: "--export-onnx: nothing is quantized: add --qtype / -qw",
    "export_per_batch_ranges": lambda e: "--export-onnx: activation ranges are measured on each evaluated batch, which "
                                         "a runtime cannot do: calibrate them with -sm collect (or reuse them with "
                                         "-sm use)",
    "export_stochastic": lambda e: "--export-onnx: stochastic rounding (-s) has no runtime form: drop -s",
    "export_weight_correction": lambda e: "--export-onnx: weight bias / variance correction (-bcw / -vcw) moves weights "
                                          "off their integer grid: drop it",
    "export_online_bca": lambda e: "--export-onnx: the seed's -bca corrects each batch online: drop it, or fold it "
                                   "into the biases with --bca-folded",
    "export_not_integer": lambda e: f"--export-onnx: {e.detail} are not an integer grid: use "
                                    f"{'--qtype' if e.detail.endswith('activations') else '-qw'} int8 or int4",
    "export_allocation": lambda e: f"--export-onnx: bit / bin allocation gives {e.detail} per-channel bit widths "
                                   "(or mid-tread grids): drop it",
    "export_bits": lambda e: f"--export-onnx: {e.detail} have no ONNX type of exactly that range: use 8 or 4 bits",
    "export_per_channel_activations": lambda e: "--export-onnx: per-channel activations have no runtime form "
                                                "(QuantizeLinear of activations is per tensor): drop -pcq_a",
    "export_zero_point_outside": lambda e: str(e).replace("set departures.range_within_data", "use --improved"),
}


def cli_wording(error: QuantizationError) -> str:
    """The error's message in the CLI's terms (its flags)."""
    wording = WORDING.get(getattr(error, "code", None))
    return wording(error) if wording is not None else str(error)

BUDGET_FLAG_OF = {"weight_bits": "--mp-weight-bits", "activation_bits": "--mp-act-bits", "gbops": "--mp-gbops"}
WORDING.update({
    "budget_too_small": lambda e: str(e).replace(f"budget {e.field}", BUDGET_FLAG_OF.get(e.field, e.field), 1),
    "budget_too_large": lambda e: str(e).replace(f"budget {e.field}", BUDGET_FLAG_OF.get(e.field, e.field), 1),
    "layer_bits_unknown_layer": lambda e: f"--layer-bits {e.detail}: not a Conv2d / Linear layer of the model with an "
                                          "integer grid; check the layer name (--report-csv lists them)",
})
