"""Model transformation: BN folding, layer policy, weights once, hooks keyed by name and removed,
collect -> save -> load -> use reproducing on-the-fly quantization, statistics file safety."""
import os

import pytest
import torch
from torch import nn

from inference.models import create_model
from pytorch_quantizer.quantizers.config import ActQuantPoint, QuantConfig, StatsKind, TensorQuantSpec
from pytorch_quantizer.maths.departures import Departures
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.formats.stats_io import StatisticsFile, load_statistics, save_statistics
from pytorch_quantizer.formats import stats_io
from pytorch_quantizer.model import quantized_model as transform
from pytorch_quantizer.model import weights as model_weights
from pytorch_quantizer.model.calibration import collect_statistics

W4A4 = dict(activations=TensorQuantSpec(4, True, "laplace", bit_allocation=True),
            weights=TensorQuantSpec(4, True, "laplace", bit_allocation=True), bias_correct_weights=True,
            keep_8bit=("conv1", "fc"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_model("fmnist_resnet20", random_init=True)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def batch():
    return torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_bn_folding_preserves_outputs_and_leaves_the_callers_model_alone(model, batch):
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.inference_mode():
        reference = model(batch)
        with transform.QuantizedModel(model, QuantConfig(), batch[:2]) as quantized:
            folded = quantized.model(batch)
            assert not any(isinstance(module, nn.BatchNorm2d) for module in quantized.model.modules())
    assert torch.allclose(folded, reference, atol=1e-4)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert any(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def test_layer_policy_keeps_first_and_last_layers_at_8_bits(model, batch):
    with transform.QuantizedModel(model, QuantConfig(**W4A4), batch[:2]) as quantized:
        plans = quantized.plans
        assert plans["conv1"].weight.bits == 8 and plans["fc"].activation.bits == 8
        assert plans["layer1.0.conv1"].weight.bits == 4 and plans["layer1.0.conv1"].weight.bit_allocation
        fc_levels = max(len(torch.unique(row)) for row in quantized.model.fc.weight)
        inner_levels = max(len(torch.unique(row)) for row in quantized.model.layer2[0].conv1.weight.reshape(32, -1))
        assert fc_levels > 16 and inner_levels <= 2**8
    config = QuantConfig(**{**W4A4, "keep_fp": ("layer3.*",)})
    with transform.QuantizedModel(model, config, batch[:2]) as quantized:
        assert quantized.plans["layer3.0.conv1"].weight is None and quantized.plans["layer3.0.conv1"].activation is None


def test_weights_are_quantized_once_and_hooks_are_removed_on_exit(model, batch, monkeypatch):
    calls = []
    original = model_weights.quantize_weight
    monkeypatch.setattr(model_weights, "quantize_weight",
                        lambda quantized, name: calls.append(name) or original(quantized, name))
    with transform.QuantizedModel(model, QuantConfig(**W4A4), batch[:2]) as quantized:
        weight_after_entry = quantized.model.layer1[0].conv1.weight.clone()
        with torch.inference_mode():
            for _ in range(3):
                quantized.model(batch)
        assert torch.equal(weight_after_entry, quantized.model.layer1[0].conv1.weight)
        hooked = [name for name, module in quantized.model.named_modules() if module._forward_hooks]
        assert "layer1.0.conv1" in hooked and "conv1" in hooked
    assert len(calls) == len(set(calls)) == 22
    assert not any(module._forward_pre_hooks or module._forward_hooks for module in quantized.model.modules())
    # on exit the copy gets its float (BN-folded) weights back: never left half quantized
    assert not torch.equal(weight_after_entry, quantized.model.layer1[0].conv1.weight)
    assert torch.equal(quantized.model.layer1[0].conv1.weight, quantized.float_params["layer1.0.conv1"][0])


def test_output_point_fuses_relu_as_half_range(model, batch):
    config = QuantConfig(activations=TensorQuantSpec(4, False, "laplace"), act_quant_point=ActQuantPoint.OUTPUT)
    with transform.QuantizedModel(model, config, batch[:2]) as quantized:
        assert quantized.plans["conv1"].fused_activation is nn.ReLU
        assert quantized.plans["layer1.0.conv2"].fused_activation is None
        outputs = {}
        handle = quantized.model.conv1.register_forward_hook(lambda m, a, out: outputs.setdefault("conv1", out))
        with torch.inference_mode():
            quantized.model(batch)
        handle.remove()
        assert float(outputs["conv1"].min()) == 0.0 and len(torch.unique(outputs["conv1"])) <= 16


def test_output_point_fuses_relu6_whole_with_its_ceiling(batch):
    """A conv followed by ReLU6 is quantized over [0, min(max, 6)]: no level above 6, where the
    ReLU6 would clip, while the pre-activation output reaches far beyond it."""
    torch.manual_seed(0)
    net = create_model("fmnist_mobilenet", random_init=True).eval()
    config = QuantConfig(activations=TensorQuantSpec(4, False, "no"))
    with transform.QuantizedModel(net, config, batch[:2]) as quantized:
        relu6 = [name for name, plan in quantized.plans.items() if plan.fused_activation is nn.ReLU6]
        module = quantized.model.get_submodule(relu6[0])
        outputs = {}
        handles = [module.register_forward_hook(lambda m, a, out: outputs.setdefault("raw", out), prepend=True),
                   module.register_forward_hook(lambda m, a, out: outputs.setdefault("quantized", out))]
        with torch.inference_mode():
            quantized.model(batch * 20)
        for handle in handles:
            handle.remove()
    levels = torch.unique(outputs["quantized"])
    assert relu6 and float(outputs["raw"].max()) > 6
    assert float(levels.min()) == 0.0 and float(levels.max()) <= 6.0 and len(levels) <= 16
    step = float(levels[1] - levels[0])
    assert abs(step - 6.0 / 15) < 1e-5  # the whole grid spans [0, 6]

@pytest.mark.parametrize("point", [ActQuantPoint.INPUT, ActQuantPoint.OUTPUT])
@pytest.mark.parametrize("clipping", ["laplace", "mse"])
def test_collected_statistics_reproduce_on_the_fly_quantization(model, batch, tmp_path, point, clipping):
    config = QuantConfig(**{**W4A4, "act_quant_point": point, "departures": Departures(calibrate_quantized=True),
                            "activations": TensorQuantSpec(4, True, clipping, bit_allocation=clipping == "laplace")})
    with torch.inference_mode(), transform.QuantizedModel(model, config, batch[:2]) as quantized:
        on_the_fly = quantized.model(batch)
        accumulators = collect_statistics(quantized, [(batch, None)], torch.device("cpu"))
    path = tmp_path / "stats.pt"
    save_statistics(StatisticsFile("fmnist_resnet20", len(batch), True, point.value, clipping, accumulators), path)
    loaded = load_statistics(path, "fmnist_resnet20", True, point.value, list(accumulators))
    assert loaded.calibration_images == 16 and set(loaded.layers) == set(accumulators)
    for name, accumulator in accumulators.items():
        assert all(torch.equal(accumulator.state[key], loaded.layers[name].state[key]) for key in accumulator.state)
    with torch.inference_mode(), transform.QuantizedModel(model, config, batch[:2]) as quantized:
        quantized.use_statistics({name: acc.reduce(StatsKind.MEAN.value) for name, acc in loaded.layers.items()})
        offline = quantized.model(batch)
    assert torch.equal(offline, on_the_fly)


def test_mean_and_max_reductions_over_batches(model, batch):
    config = QuantConfig(**W4A4)
    with torch.inference_mode(), transform.QuantizedModel(model, config, batch[:2]) as quantized:
        accumulators = collect_statistics(quantized, [(batch[:8], None), (batch[8:], None)], torch.device("cpu"))
    layer = accumulators["layer2.0.conv1"]
    assert layer.batches == 2
    mean, widest = layer.reduce("mean"), layer.reduce("max")
    assert bool((widest.max >= mean.max).all()) and bool((widest.min <= mean.min).all())
    assert bool((widest.b >= mean.b).all()) and torch.equal(widest.mean, mean.mean)


@pytest.fixture
def stats_file(model, batch, tmp_path):
    with torch.inference_mode(), transform.QuantizedModel(model, QuantConfig(**W4A4), batch[:2]) as quantized:
        accumulators = collect_statistics(quantized, [(batch, None)], torch.device("cpu"))
    path = tmp_path / "fmnist_resnet20.stats.pt"
    save_statistics(StatisticsFile("fmnist_resnet20", 16, True, "input", "laplace", accumulators), path)
    return path, sorted(accumulators)


def load(path, layers, model_name="fmnist_resnet20", per_channel=True):
    return load_statistics(path, model_name, per_channel, "input", layers)


def test_statistics_of_another_model_or_granularity_are_refused(stats_file):
    path, layers = stats_file
    with pytest.raises(QuantizationError, match="statistics of model fmnist_resnet20, not fmnist_mobilenet"):
        load(path, layers, model_name="fmnist_mobilenet")
    with pytest.raises(QuantizationError, match="per-channel statistics but this run quantizes activations per tensor"):
        load(path, layers, per_channel=False)
    with pytest.raises(QuantizationError, match="lacks statistics of layer extra.conv"):
        load(path, layers + ["extra.conv"])


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_truncated_tampered_and_pickled_statistics_are_refused(stats_file):
    path, layers = stats_file
    payload = torch.load(path, weights_only=True)
    payload["layers"]["layer1.0.conv1"]["sum.max"] *= 2
    tampered = path.with_name("tampered.pt")
    torch.save(payload, tampered)
    with pytest.raises(QuantizationError, match="fails its checksum"):
        load(tampered, layers)
    truncated = path.with_name("truncated.pt")
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(QuantizationError, match="corrupt, truncated"):
        load(truncated, layers)
    evil = path.with_name("evil.pt")
    torch.save({"format": "ptq-statistics", "layers": Exploit()}, evil)
    with pytest.raises(QuantizationError, match="would execute pickled code"):
        load(evil, layers)


def test_interrupted_save_leaves_the_previous_file_intact(stats_file, monkeypatch):
    path, layers = stats_file
    original = path.read_bytes()

    def dying_save(payload, target):
        with open(target, "wb") as stream:
            stream.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(stats_io.torch, "save", dying_save)
    empty = StatisticsFile("fmnist_resnet20", 1, True, "input", "laplace", {})
    with pytest.raises(KeyboardInterrupt):
        save_statistics(empty, path)
    assert path.read_bytes() == original
    assert sorted(item.name for item in path.parent.iterdir()) == [path.name]
    monkeypatch.undo()
    assert load(path, layers).calibration_images == 16


def test_importing_the_library_solves_nothing_and_builds_nothing():
    import subprocess
    import sys

    from conftest import REPO_ROOT

    probe = ("import sys, pytorch_quantizer.model.quantized_model, pytorch_quantizer.quantizers.backend; "
             "print(sorted(name for name in ('scipy.optimize', 'torch.utils.cpp_extension', 'ptq_kernels_cpu') "
             "if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
