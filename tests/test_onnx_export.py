"""ONNX QDQ export (``pytorch_quantizer.export.onnx``, --export-onnx / --verify-onnx): every quantized
tensor has its QDQ pair with the simulator's scale and zero point (read back with the onnx API),
onnxruntime's logits match the simulator's on a fixed batch, refused recipes exit 2 with one line,
and a W4A8 export (4-bit weight initializers) runs in onnxruntime."""
import json

import numpy as np
import pytest
import torch

from inference.fashion_mnist import DEFAULT_DIR, InMemoryImages, load_split
from pytorch_quantizer.model.calibration import collect_statistics
from pytorch_quantizer.model.weights import weight_grid

MODEL = "fmnist_mobilenet"


def calibrated(int32_bias: bool = False):
    """A QuantizedModel of fmnist_mobilenet at W8A8 (per-channel weights; entered) with activation
    statistics from 256 training images, and a fixed batch of 200 test images."""
    from inference.models import create_model
    from pytorch_quantizer.model.calibration import reduced
    from pytorch_quantizer.model.quantized_model import QuantizedModel
    from pytorch_quantizer.quantizers.config import QuantConfig, TensorQuantSpec

    config = QuantConfig(activations=TensorQuantSpec(8), weights=TensorQuantSpec(8, per_channel=True),
                         keep_8bit=("features.0.0", "classifier.1"), int32_bias=int32_bias)
    train = InMemoryImages(*load_split(DEFAULT_DIR, "train"))
    test = InMemoryImages(*load_split(DEFAULT_DIR, "test"))
    calibration = [train[list(range(start, start + 128))] for start in (0, 128)]
    batch = test[list(range(200))][0]
    quantized = QuantizedModel(create_model(MODEL), config, batch[:2]).__enter__()
    accumulators = collect_statistics(quantized, calibration, torch.device("cpu"))
    quantized.use_statistics(reduced(accumulators, "mean", quantized.kept_layers()))
    return quantized, batch


@pytest.fixture(scope="module")
def w8a8():
    from pytorch_quantizer.export.onnx import export_qdq

    quantized, batch = calibrated()
    proto, encodings = export_qdq(quantized, batch[:1])
    return quantized, batch, proto, encodings


def initializer(proto, name: str) -> np.ndarray:
    from onnx import numpy_helper

    (tensor,) = [tensor for tensor in proto.graph.initializer if tensor.name == name]
    return numpy_helper.to_array(tensor).astype(np.float64)


def test_every_quantized_tensor_has_its_qdq_pair_with_the_simulators_grid(w8a8):
    quantized, _, proto, encodings = w8a8
    nodes = {node.name: node for node in proto.graph.node}
    activations = quantized.activation_plans()
    assert sum(node.op_type == "QuantizeLinear" for node in proto.graph.node) == len(activations)
    assert len([e for e in encodings if e.tensor == "weight"]) == len(quantized.plans) == 26
    for name in activations:
        plan = quantized.activation_plan(name)
        pair = nodes[f"{name}.output/QuantizeLinear"], nodes[f"{name}.output/DequantizeLinear"]
        for node in pair:
            assert initializer(proto, node.input[1]) == pytest.approx(float(plan.scale), rel=1e-7)
            assert initializer(proto, node.input[2]) == float(plan.zero_point)
        assert pair[0].output[0] == pair[1].input[0]
    for name in quantized.plans:
        grid = weight_grid(quantized, name)
        dequantize = nodes[f"{name}.weight_quantized/DequantizeLinear"]
        assert initializer(proto, dequantize.input[1]) == pytest.approx(grid.scale.double().numpy(), rel=1e-7)
        codes, zero_point = initializer(proto, dequantize.input[0]), initializer(proto, dequantize.input[2])
        shape = (-1,) + (1,) * (codes.ndim - 1)
        restored = (codes - zero_point.reshape(shape)) * grid.scale.double().numpy().reshape(shape)
        simulated = quantized.model.get_submodule(name).weight.detach().double().numpy()
        assert np.abs(restored - simulated).max() <= 1e-6 * np.abs(simulated).max()
        assert any(attribute.name == "axis" and attribute.i == 0 for attribute in dequantize.attribute)


def runtime_logits(proto, batch: torch.Tensor, optimize: bool) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not optimize:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": batch.numpy()})[0]


def test_runtime_logits_match_the_simulators_on_a_fixed_batch(w8a8):
    """Without graph optimizations onnxruntime runs each Q / DQ and the float Conv as the simulator
    does, so logits differ only where a value sits within float rounding of a .5 tie (x / s against
    x * (1 / s), another summation order) and one code moves by one step (measured: at most 1 step
    of the logits' grid, 0.8 % of the logits); we allow 2 steps anywhere and 2 % of a step on
    average. With its optimizations onnxruntime fuses Conv -> Q into integer kernels whose int32
    accumulators are requantized with their own rounding, which moves more codes by a step
    (measured: at most 2 steps, 27 % of the logits one step off); we allow 4 steps and 40 % of a
    step on average. The top-1 class must agree on 99 % of the batch in both."""
    quantized, batch, proto, encodings = w8a8
    with torch.no_grad():
        simulated = quantized.model(batch).numpy()
    step = [e for e in encodings if e.tensor == "output"][-1].scale[0]
    for optimize, largest, mean in ((False, 2, 0.02), (True, 4, 0.4)):
        difference = np.abs(runtime_logits(proto, batch, optimize) - simulated) / step
        assert difference.max() <= largest and difference.mean() <= mean, (optimize, difference.max(), difference.mean())
        assert (runtime_logits(proto, batch, optimize).argmax(1) == simulated.argmax(1)).mean() >= 0.99


def test_cli_exports_verifies_and_writes_the_encodings(run_cli, tmp_path):
    model, results = tmp_path / "w4a8.onnx", tmp_path / "w4a8.json"
    code, out, err = run_cli("-a", MODEL, "-p", "0", "-b", "100", "-ss", "200", "-pcq_w", "--qtype", "int8",
                             "-qw", "int4", "-sm", "collect", "-cs", "256", "-sf", tmp_path, "--export-onnx", model,
                             "--verify-onnx", "--results-json", results, "-mlexp", "onnx-export")
    assert code == 0, err
    figures = json.loads(results.read_text())
    assert figures["onnx_simulator_top1"] == figures["top1"]
    assert figures["onnx_top1_agreement"] >= 99.0 and abs(figures["onnx_top1"] - figures["top1"]) <= 1.0
    assert "onnxruntime on the same images: Prec@1" in out
    # a changed class needs the logit differences to close the simulator's margin: m <= 2 max |diff|
    assert 0.0 <= figures["onnx_max_flipped_margin"] <= 2 * figures["onnx_max_abs_logit_diff"]
    assert (figures["onnx_max_flipped_margin"] > 0) == (figures["onnx_top1_agreement"] < 100)
    encodings = json.loads((tmp_path / "w4a8.encodings.json").read_text())
    assert encodings["opset"] == 21
    weights = [e for e in encodings["encodings"] if e["tensor"] == "weight"]
    assert {e["storage"] for e in weights if e["bits"] == 4} <= {"uint4", "int8", "int16"}
    assert any(e["storage"] == "uint4" for e in weights)
    assert {e["bits"] for e in weights} == {4, 8}      # first conv and classifier kept at 8 bits
    import mlflow

    run = mlflow.search_runs(experiment_names=["onnx-export"]).iloc[0]
    assert run["metrics.onnx_top1_agreement"] == figures["onnx_top1_agreement"]
    assert run["metrics.onnx_top1"] == figures["onnx_top1"]
    assert run["metrics.onnx_max_flipped_margin"] == figures["onnx_max_flipped_margin"]


@pytest.mark.parametrize("flags, message", [
    (["-pcq_a", "--qtype", "int8", "-sm", "collect"], "per-channel activations have no runtime form"),
    (["-pcq_w", "-qw", "int4", "-baw", "--qtype", "int8", "-sm", "collect"], "bit / bin allocation"),
    (["--qtype", "int8", "-qw", "int8", "-s", "-sm", "collect"], "stochastic rounding (-s) has no runtime form"),
    (["-pcq_w", "-qw", "int4", "-baw", "-batw", "3.5", "-mtq", "--qtype", "int8", "-sm", "collect"], "bit / bin allocation"),
    (["-qw", "kmeans4", "--qtype", "int8", "-sm", "collect"], "kmeans weights are not an integer grid"),
    (["--qtype", "int8", "-qw", "int8"], "activation ranges are measured on each evaluated batch"),
    (["--qtype", "int8", "-qw", "int4", "-bcw", "-sm", "collect"], "moves weights off their integer grid"),
    (["--qtype", "int6", "-qw", "int8", "-sm", "collect"], "6-bit activations have no ONNX type"),
])
def test_refused_recipes_exit_2_with_one_line(run_cli, tmp_path, flags, message):
    code, _, err = run_cli("-a", MODEL, "-p", "0", "-ss", "10", *flags, "-sf", tmp_path,
                           "--export-onnx", tmp_path / "model.onnx")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("flags, message", [
    (["--qtype", "int8", "-sm", "collect", "--verify-onnx"], "--verify-onnx checks an exported model: add --export-onnx"),
    (["--export-onnx", "model.pt"], "name the file *.onnx"),
    (["--export-onnx", "model.onnx"], "--export-onnx exports a quantized model"),
])
def test_onnx_flag_mistakes_exit_2_with_one_line(run_cli, tmp_path, flags, message):
    code, _, err = run_cli("-a", MODEL, "-p", "0", "-ss", "10", *flags)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("extra", [["--equalize"], ["--improved"]])
def test_equalized_clamps_and_input_quantization_export_and_agree(run_cli, tmp_path, extra):
    """--equalize leaves per-channel clamps (Max / Min) after the quantized outputs; --improved
    quantizes what each GEMM reads and the rectified outputs."""
    results = tmp_path / "results.json"
    code, _, err = run_cli("-a", MODEL, "-p", "0", "-b", "100", "-ss", "200", "-pcq_w", "--qtype", "int8", "-qw", "int8",
                           "-sm", "collect", "-cs", "256", "-sf", tmp_path, *extra, "--export-onnx", tmp_path / "m.onnx",
                           "--verify-onnx", "--results-json", results)
    assert code == 0, err
    figures = json.loads(results.read_text())
    assert figures["onnx_top1_agreement"] >= 98.5 and figures["onnx_max_abs_logit_diff"] < 0.5


def test_a_model_onnxruntime_cannot_load_is_a_one_line_error(tmp_path):
    from inference.errors import UserError
    from inference.onnx_runtime import RuntimeModel

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match=r"^--verify-onnx: onnxruntime cannot load .*broken.onnx: ") as caught:
        RuntimeModel(broken)
    assert "\n" not in str(caught.value)
