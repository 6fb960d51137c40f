"""The other seeds' quantizer kinds in the simulator: parsing, where each kind is defined, the
refused combinations (exit 2, one line), and post-training runs on Fashion-MNIST."""
import json

import pytest
import torch

from pytorch_quantizer.quantizers import families
from pytorch_quantizer.maths import level_sets
from pytorch_quantizer.quantizers.config import WeightKind, parse_qtype
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.maths.level_sets import LevelFamily


@pytest.mark.parametrize("text, for_weights, expected", [
    ("int4", False, (WeightKind.INT, 4)), ("kmeans3", True, (WeightKind.KMEANS, 3)),
    ("apot4", True, (WeightKind.APOT, 4)), ("pot3", False, (WeightKind.POT, 3)),
    ("uniform2", True, (WeightKind.UNIFORM, 2)), ("n2uq2", False, (WeightKind.N2UQ, 2)),
    ("n2uq", None, None), ("dorefa1", True, (WeightKind.DOREFA, 1)), ("binary", False, (WeightKind.BINARY, 1)),
    ("ternary", True, (WeightKind.TERNARY, 2)),
])
def test_kinds_parse_with_their_bits(text, for_weights, expected):
    if expected is None:
        with pytest.raises(QuantizationError, match="needs a bit width, e.g. n2uq4"):
            parse_qtype(text, True)
        return
    assert parse_qtype(text, for_weights) == expected


@pytest.mark.parametrize("text, for_weights, message", [
    ("apot1", True, "apot takes 2..8 bits for weights"),
    ("dorefa0", False, "dorefa takes 1..16 bits for activations"),
    ("n2uq0", True, "n2uq takes 1..8 bits for weights"),
    ("pot8", False, "pot takes 2..7 bits for activations"),
    ("ternary", False, "ternary is not defined for activations"),
    ("kmeans4", False, "kmeans is not defined for activations"),
    ("binary2", True, "binary takes no bit width (it is 1-bit); write binary"),
])
def test_bad_kinds_name_the_problem(text, for_weights, message):
    with pytest.raises(QuantizationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_qtype(text, for_weights)


@pytest.mark.parametrize("argv, message", [
    (["--qtype", "apot1"], "apot takes 2..8 bits for activations"),
    (["--qtype", "int4", "-qw", "dorefa0"], "dorefa takes 1..16 bits for weights"),
    (["--qtype", "n2uq0"], "n2uq takes 1..8 bits for activations"),
    (["--qtype", "binary", "-pcq_a"], "binary activations are quantized per tensor: drop -pcq_a"),
    (["--qtype", "apot4", "--act-quant-point", "output"], "apot activations quantize what each GEMM reads"),
    (["--qtype", "apot4", "-c", "laplace"], "apot quantization calibrates its own scale"),
    (["-qw", "ternary", "-pcq_w"], "ternary weights are defined per layer: drop -pcq_w"),
    (["--qtype", "n2uq2", "-sm", "collect"], "-sm collect stores GEMMLOWP statistics"),
    (["--qtype", "ternary"], "ternary is not defined for activations"),
])
def test_refused_kind_combinations_exit_2_with_one_line(run_cli, argv, message):
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", "-ss", "20", *argv)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr and "Prec@1" not in stdout


def test_mse_alpha_finds_the_clipping_of_least_error():
    torch.manual_seed(0)
    rows = torch.randn(3, 4000)
    levels = level_sets.activation_levels(LevelFamily.UNIFORM, 3, signed=True)
    alpha = families.mse_alpha(rows, levels)
    error = lambda a: (families.levels_plan(levels, a).apply(rows, 0) - rows).square().mean(dim=1)  # noqa: E731
    best = error(alpha)
    for factor in (0.8, 0.9, 1.1, 1.25):
        assert bool((best <= error(alpha * factor) + 1e-7).all())
    assert bool((alpha < rows.abs().amax(dim=1)).all())  # a Gaussian's optimum clips


@pytest.mark.parametrize("kind, bits", [(WeightKind.APOT, 4), (WeightKind.POT, 3), (WeightKind.UNIFORM, 3)])
def test_level_weights_take_only_their_level_set_per_layer(kind, bits):
    torch.manual_seed(1)
    weight = torch.randn(8, 4, 3, 3) * 0.1
    values, codes = families.quantize_weight(weight, kind, bits, per_channel=False)
    normalized, mean, std = level_sets.normalize_weights(weight)
    levels = level_sets.weight_levels(families.LEVEL_KINDS[kind], bits)
    unit = (values - mean) / std
    alpha = unit.abs().max() / levels.max()
    assert torch.allclose(unit / alpha, levels[codes.long()], atol=1e-4)
    assert codes.max() < levels.numel() and (values - weight).square().mean() < weight.square().mean() / 4


def test_binary_and_ternary_weights_are_their_closed_forms():
    weight = torch.randn(6, 3, 3, 3)
    values, codes = families.quantize_weight(weight, WeightKind.BINARY, 1, per_channel=True)
    assert torch.equal(values, level_sets.binarize_weights(weight)) and set(codes.unique().tolist()) <= {0, 1}
    values, codes = families.quantize_weight(weight, WeightKind.TERNARY, 2, per_channel=False)
    assert torch.equal(values, level_sets.ternarize_weights(weight)) and set(codes.unique().tolist()) <= {0, 1, 2}


def test_xnor_output_is_the_sign_gemm_scaled_by_k_plus_bias():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    signs, k = families.xnor_input(x, conv)
    y = families.xnor_output(conv(signs), k, conv)
    expected = torch.nn.functional.conv2d(signs, conv.weight, None, padding=1) * k + conv.bias.reshape(1, -1, 1, 1)
    assert torch.allclose(y, expected, atol=1e-5)


@pytest.mark.parametrize("qtype, qweight, floor", [
    ("apot4", "apot4", 90.0), ("uniform4", "uniform4", 90.0), ("n2uq4", "n2uq4", 90.0), ("pot4", "pot4", 70.0),
])
def test_post_training_kinds_on_fashion_mnist(run_cli, tmp_path, qtype, qweight, floor):
    results = tmp_path / "results.json"
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", "-ss", "200", "-cs", "200", "-b", "100", "--qtype", qtype,
                                   "-qw", qweight, "--results-json", results)
    assert code == 0, stderr
    result = json.loads(results.read_text())
    assert result["top1"] >= floor, result
    assert result["quantization"]["activations"]["kind"] == qtype.rstrip("0123456789")
