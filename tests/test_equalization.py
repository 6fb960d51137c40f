"""Cross-layer equalization and high-bias absorption (``pytorch_quantizer.methods.equalization``, --equalize):
the float function is kept, ranges are balanced, absorption is exact where its assumption holds,
and the CLI flag runs, records what it did and refuses what it cannot do."""
import json

import pytest
import torch
from torch import nn

from inference import models
from pytorch_quantizer.methods.equalization import (
    equalization_scales,
    equalize,
    input_channel_ranges,
    output_channel_ranges,
)
from pytorch_quantizer.model.graph import ChannelClamp


def relative_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).abs().max() / reference.abs().max())


@pytest.mark.parametrize("arch, shape, chains", [
    ("efficientnet_lite0", (2, 3, 224, 224), 34),   # ReLU6 everywhere, depthwise, shared activation modules
    ("fmnist_mobilenet", (8, 1, 28, 28), 15),       # ReLU6, depthwise
    ("fmnist_resnet20", (8, 1, 28, 28), 9),         # ReLU, residual adds (only block-internal pairs)
])
def test_equalization_keeps_the_float_logits(arch, shape, chains):
    torch.manual_seed(0)
    model = models.create_model(arch).eval()
    inputs = torch.randn(shape)
    equalized, report = equalize(model)
    with torch.no_grad():
        assert relative_difference(model(inputs), equalized(inputs)) < 1e-4
    assert report.chains == chains
    assert report.absorbed_channels == 0  # no 1x1 reader after a BN whose beta exceeds 3 |gamma| in these models


def test_equalized_pairs_share_their_ranges():
    model = models.create_model("fmnist_mobilenet").eval()
    before = {name: module.weight.detach().clone() for name, module in model.named_modules()
              if isinstance(module, nn.Conv2d)}
    equalized, report = equalize(model)
    first = equalized.get_submodule("features.1.conv.0.0")
    second = equalized.get_submodule("features.1.conv.1")
    assert torch.allclose(output_channel_ranges(first), input_channel_ranges(second), rtol=1e-4)
    assert not torch.allclose(before["features.1.conv.0.0"], first.weight)


def test_scales_balance_the_two_ranges():
    scales = equalization_scales(torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0]))
    assert scales.tolist() == [2.0, 0.5, 1.0]


def test_grouped_input_ranges_follow_the_groups():
    conv = nn.Conv2d(4, 4, 3, groups=4, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(36, dtype=torch.float32).reshape(4, 1, 3, 3))
    assert input_channel_ranges(conv).tolist() == [8.0, 17.0, 26.0, 35.0]


class PointwisePair(nn.Module):
    """1x1 conv -> BN -> ReLU6 -> 1x1 conv, with BN shifts above 3 |gamma| on two channels (channel 0
    also passes the ReLU6 ceiling, which absorption must move)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU6()
        self.second = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.first.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1))
            self.bn.weight.copy_(torch.tensor([1.5, 1.0, 0.2]))
            self.bn.bias.copy_(torch.tensor([5.0, 0.5, 1.0]))
            self.second.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]]).reshape(2, 3, 1, 1))

    def forward(self, x):
        return self.second(self.act(self.bn(self.first(x))))


def test_high_bias_absorption_is_exact_where_pre_activations_stay_above_the_shift():
    model = PointwisePair().eval()
    inputs = torch.rand(4, 3, 5, 5) * 5.8 - 2.9   # normalised values within 3 sigma: beta + gamma x >= beta - 3 gamma
    equalized, report = equalize(model)
    assert report.absorbed_channels == 2           # channels 0 (5 - 4.5) and 2 (1 - 0.6); not 1 (0.5 - 3)
    assert any(isinstance(module, ChannelClamp) for module in equalized.modules())
    with torch.no_grad():
        assert relative_difference(model(inputs), equalized(inputs)) < 1e-5


def test_absorption_shrinks_the_range_the_reader_sees():
    model = PointwisePair().eval()
    inputs = torch.rand(4, 3, 5, 5) * 5.8 - 2.9
    seen = {}
    plain, _ = equalize(model, absorb_high_bias=False)
    absorbed, _ = equalize(model)
    for label, transformed in (("plain", plain), ("absorbed", absorbed)):
        handle = transformed.get_submodule("second").register_forward_pre_hook(
            lambda module, args, label=label: seen.__setitem__(label, args[0].amin(dim=(0, 2, 3))))
        with torch.no_grad():
            transformed(inputs)
        handle.remove()
    assert bool((seen["absorbed"] < seen["plain"] - 1e-3).any())
    assert bool((seen["absorbed"] >= -1e-6).all())


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


def test_untraceable_models_are_named():
    with pytest.raises(ValueError, match="cannot be traced by torch.fx"):
        equalize(DataDependent())


def test_equalize_flag_rescues_per_tensor_w4a4_on_fmnist_mobilenet(run_cli, tmp_path):
    common = ["-a", "fmnist_mobilenet", "--qtype", "int4", "-qw", "int4", "-c", "laplace", "-b", "200",
              "--subset", "400"]
    results = {}
    for label, extra in (("plain", []), ("equalized", ["--equalize"])):
        path = tmp_path / f"{label}.json"
        code, _, err = run_cli(*common, *extra, "--results-json", path)
        assert code == 0, err
        results[label] = json.loads(path.read_text())
    assert results["equalized"]["equalization.chains"] == 15
    assert results["equalized"]["top1"] > results["plain"]["top1"] + 3.0


@pytest.mark.parametrize("argv, message", [
    (["--equalize"], "--equalize has no effect: nothing is quantized"),
    (["--qtype", "apot2", "-qw", "apot2", "--qat-epochs", "1", "--equalize"],
     "--equalize is a post-training method and --qat-epochs replaces the weights it works on: drop one of them"),
])
def test_equalize_refusals_exit_2_with_one_line(run_cli, argv, message):
    code, _, err = run_cli("-a", "fmnist_mobilenet", *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
