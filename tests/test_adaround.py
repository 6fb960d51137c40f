"""AdaRound (``pytorch_quantizer.methods.adaround``, --adaround): the rounding stays within one grid step of
round-to-nearest, lowers the layer-output error, ends decided (0 / 1) because of its regulariser,
and a saved rounding reloads to the same model; the CLI's refusals."""
import json

import pytest
import torch
from torch import nn

from pytorch_quantizer.maths import soft_rounding, weight_grid
from pytorch_quantizer.methods import adaround
from pytorch_quantizer.maths import primitives


def conv_case(seed: int = 0):
    """A 4-bit per-channel grid for a conv, and inputs with correlated channels (as real feature maps)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    weight = conv.weight.detach()
    rows = weight.reshape(32, -1)
    scale, zero_point, qmax = primitives.seed_gemmlowp_params(rows.amin(1), rows.amax(1), torch.full((32,), 4.0), False)
    mixing = torch.randn(16, 16) / 4 + torch.eye(16)
    inputs = torch.einsum("nchw,cd->ndhw", torch.randn(256, 16, 8, 8), mixing).relu()
    with torch.no_grad():
        targets = conv(inputs)
    return conv, weight, weight_grid.Grid(scale, zero_point, qmax), inputs, targets


def test_nearest_rounding_is_the_grid_of_fake_quantize():
    _, weight, grid, _, _ = conv_case()
    nearest = weight_grid.rounded_weight(weight, grid, weight_grid.nearest_rounding(weight, grid))
    assert torch.equal(nearest, primitives.fake_quantize(weight, grid.scale, grid.zero_point, grid.qmax, 0))


def test_learned_rounding_is_within_one_step_and_lowers_the_output_error():
    conv, weight, grid, inputs, targets = conv_case()
    result = adaround.learn_rounding(conv, weight, grid, inputs, targets, iterations=600, batch=32)
    nearest = weight_grid.rounded_weight(weight, grid, weight_grid.nearest_rounding(weight, grid))
    learned = weight_grid.rounded_weight(weight, grid, result.up)
    steps = ((learned - nearest).abs() / grid.scale.reshape(-1, 1, 1, 1)).round()
    assert steps.max() <= 1
    assert (steps == 1).any()                      # it did change some roundings
    assert result.learned_error < result.nearest_error


def test_step_sizes_are_learned_at_a_cosine_annealed_rate():
    """Under a gradient of steady sign and size Adam moves a parameter by its rate each step; annealed
    along lr (1 + cos(pi t / T)) / 2 as BRECQ / QDrop do, T steps move it by lr (T + 1) / 2 in all,
    half of what the constant rate would."""
    conv, weight, grid, inputs, targets = conv_case()
    gain = torch.tensor(1.0, requires_grad=True)   # the output should be 3x: d loss / d gain keeps its sign

    def output(values, batch):
        return gain * adaround.layer_output(conv, values["weight"], batch)

    adaround.learn_soft_roundings({"weight": weight}, {"weight": grid}, output, inputs, 3 * targets, iterations=50,
                                  batch=32, step_sizes=[gain], step_size_lr=1e-3)
    assert float(gain.detach()) - 1.0 == pytest.approx(1e-3 * 51 / 2, rel=0.05)


def test_with_the_weight_correction_the_learner_fits_the_weights_the_model_evaluates():
    """-bcw moves every quantized channel's mean back to the float one; the learner fits (and
    reports the error of) the corrected weights, which is what the model computes with."""
    from pytorch_quantizer.maths.bias_correction import correct_weights
    from pytorch_quantizer.model.weights import weight_correction
    from pytorch_quantizer.quantizers.config import QuantConfig, TensorQuantSpec

    conv, weight, grid, inputs, targets = conv_case(seed=3)
    correction = weight_correction(QuantConfig(weights=TensorQuantSpec(4, per_channel=True), bias_correct_weights=True))
    assert weight_correction(QuantConfig(weights=TensorQuantSpec(4, per_channel=True))) is None
    result = adaround.learn_rounding(conv, weight, grid, inputs, targets, iterations=300, batch=32,
                                     correction=correction)
    evaluated = correct_weights(weight, weight_grid.rounded_weight(weight, grid, result.up))
    with torch.no_grad():
        error = float((adaround.layer_output(conv, evaluated, inputs) - targets).square().mean())
    assert result.learned_error == pytest.approx(error, rel=1e-5)
    assert result.learned_error < result.nearest_error


def test_the_regulariser_drives_the_soft_rounding_to_zero_or_one():
    conv, weight, grid, inputs, targets = conv_case()
    regularised = adaround.learn_rounding(conv, weight, grid, inputs, targets, iterations=600, batch=32)
    free = adaround.learn_rounding(conv, weight, grid, inputs, targets, iterations=600, batch=32, regularisation=0.0)
    assert regularised.undecided < 0.01
    assert free.undecided > 0.5


def test_beta_is_off_during_warm_up_then_anneals_from_20_to_2():
    assert adaround.beta_at(0, 100) is None and adaround.beta_at(19, 100) is None
    assert adaround.beta_at(20, 100) == pytest.approx(20.0)
    assert adaround.beta_at(99, 100) == pytest.approx(2.0)
    assert soft_rounding.rounding_regulariser(torch.tensor([0.0, 1.0, 0.5]), 2.0) == pytest.approx(1.0)


def test_initial_soft_rounding_reproduces_the_float_weight_inside_the_grid():
    _, weight, grid, _, _ = conv_case()
    soft = adaround.rectified_sigmoid(adaround.initial_logits(weight, grid))
    scale, zero_point, qmax = grid.shaped(weight)
    codes = torch.floor(weight * (1.0 / scale)) + soft + zero_point
    inside = (codes >= 0) & (codes <= qmax)          # the clamp at the grid's ends aside
    assert inside.float().mean() > 0.9
    difference = (weight_grid.rounded_weight(weight, grid, soft) - weight).abs() / scale
    assert float(difference[inside].max()) < 1e-3


def test_saved_rounding_reloads_to_the_same_model(run_cli, tmp_path):
    common = ["-a", "fmnist_mobilenet", "--qtype", "int4", "-qw", "int4", "-c", "laplace", "-b", "100",
              "--subset", "100", "--adaround", "-sf", tmp_path]
    learned, reused = tmp_path / "learned.json", tmp_path / "reused.json"
    code, _, err = run_cli(*common, "-sm", "collect", "-cs", "64", "--recon-iters", "20", "--recon-batch", "16",
                           "--results-json", learned)
    assert code == 0, err
    code, _, err = run_cli(*common, "-sm", "use", "--results-json", reused)
    assert code == 0, err
    first, second = json.loads(learned.read_text()), json.loads(reused.read_text())
    assert first["rounding_layers"] == 26 and "rounding_layers" not in second
    assert second["rounding_file"] == first["rounding_file"]
    assert (first["top1"], first["loss"]) == (second["top1"], second["loss"])


@pytest.mark.parametrize("argv, message", [
    (["--qtype", "int4", "--recon-iters", "5"], "--recon-iters concerns learned rounding: add --adaround or --reconstruct block"),
    (["--qtype", "int4", "--recon-batch", "8"], "--recon-batch concerns learned rounding: add --adaround or --reconstruct block"),
    (["--qtype", "int4", "--recon-groups", "2"],
     "--recon-groups concerns learned rounding: add --adaround or --reconstruct block"),
    (["--qtype", "int4", "-qw", "apot4", "--adaround"],
     "--adaround learns the rounding of integer-grid weights and -qw is apot4: use -qw intN"),
    (["--qtype", "int4", "--adaround", "-s"], "--adaround learns a fixed rounding and -s rounds at random"),
    (["--qtype", "apot2", "-qw", "apot2", "--qat-epochs", "1", "--adaround"],
     "--adaround is a post-training method and --qat-epochs replaces the weights it works on"),
])
def test_adaround_refusals_exit_2_with_one_line(run_cli, argv, message):
    code, _, err = run_cli("-a", "fmnist_mobilenet", *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_reusing_a_rounding_that_was_never_learned_names_the_fix(run_cli, tmp_path):
    code, _, err = run_cli("-a", "fmnist_mobilenet", "--qtype", "int4", "-qw", "int4", "-sm", "collect", "-cs", "64",
                           "--subset", "10", "-sf", tmp_path)
    assert code == 0, err
    code, _, err = run_cli("-a", "fmnist_mobilenet", "--qtype", "int4", "-qw", "int4", "-sm", "use", "--adaround",
                           "--subset", "10", "-sf", tmp_path)
    assert code == 2
    assert "no learned rounding" in err and "--adaround -sm collect" in err


def test_blocks_are_the_children_of_sequential_containers():
    from inference import models
    from pytorch_quantizer.methods.reconstruction import model_blocks

    model = models.create_model("fmnist_resnet20")
    layers = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    blocks = model_blocks(model, layers)
    assert blocks["layer1.0"] == ["layer1.0.conv1", "layer1.0.conv2"]
    assert blocks["conv1"] == ["conv1"]
    assert sorted(name for members in blocks.values() for name in members) == sorted(layers)


def test_straight_through_activations_pass_gradients_and_qdrop_keeps_float_values():
    from inference import models
    from pytorch_quantizer.quantizers.config import QuantConfig, TensorQuantSpec
    from pytorch_quantizer.model.quantized_model import QuantizedModel

    model = models.create_model("fmnist_mobilenet").eval()
    inputs = torch.randn(4, 1, 28, 28)
    config = QuantConfig(activations=TensorQuantSpec(bits=4), weights=None)
    with QuantizedModel(model, config, inputs[:2]) as quantized:
        layer = quantized.model.get_submodule("features.2.conv.2")
        seen = []
        handle = layer.register_forward_hook(lambda module, args, output: seen.append(args[0]))
        with torch.no_grad():
            quantized.model(inputs)
        with quantized.learning.straight_through(0.0):
            probe = inputs.clone().requires_grad_(True)
            quantized.model(probe).sum().backward()
            assert probe.grad is not None and float(probe.grad.abs().sum()) > 0
        with torch.no_grad(), quantized.learning.straight_through(0.999999):
            quantized.model(inputs)
        with torch.no_grad(), quantized.bypassed():
            quantized.model(inputs)
        handle.remove()
    hard, dropped, floating = seen[0], seen[2], seen[3]
    assert float((hard == floating).float().mean()) < 0.9
    assert float((dropped == floating).float().mean()) > 0.999


def learned_then_reused(run_cli, common: list, folder, *learning: str) -> dict:
    """Runs ``common`` with ``-sm collect`` and ``learning``, then with ``-sm use``; asserts both
    succeed with the same top-1 and loss; returns the first run's results."""
    learned, reused = folder / "learned.json", folder / "reused.json"
    code, _, err = run_cli(*common, "-sm", "collect", *learning, "--results-json", learned)
    assert code == 0, err
    code, _, err = run_cli(*common, "-sm", "use", "--results-json", reused)
    assert code == 0, err
    first, second = json.loads(learned.read_text()), json.loads(reused.read_text())
    assert (first["top1"], first["loss"]) == (second["top1"], second["loss"])
    return first


def test_block_reconstruction_with_qdrop_saves_and_reloads(run_cli, tmp_path):
    common = ["-a", "fmnist_mobilenet", "--qtype", "int4", "-qw", "int4", "-b", "100", "--subset", "100",
              "--reconstruct", "block", "--qdrop", "0.5", "-sf", tmp_path]
    first = learned_then_reused(run_cli, common, tmp_path, "-cs", "64", "--recon-iters", "20")
    assert first["rounding_layers"] == 26 and first["rounding_file"].endswith(".block-rounding.pt")
    assert first["rounding_units"] == 11   # the stem, nine blocks, the classifier


@pytest.mark.parametrize("argv, message", [
    (["--qtype", "int4", "--qdrop", "0.5"], "--qdrop drops activation quantization while learning blocks"),
    (["--qtype", "int4", "--adaround", "--reconstruct", "block"], "--adaround learns layer by layer and"),
    (["--qtype", "int4", "--reconstruct", "block", "--qdrop", "1.5"], "is not a probability in [0, 1)"),
    (["--qtype", "int4", "--reconstruct", "block", "--step-size-lr", "1e-3"],
     "--step-size-lr is the learning rate of learned step sizes: add --learn-step-sizes"),
    (["--qtype", "int4", "--reconstruct", "block", "--learn-step-sizes", "-sm", "collect", "--step-size-lr", "0"],
     "argument --step-size-lr: must be a positive number, got 0"),
])
def test_reconstruction_refusals_exit_2_with_one_line(run_cli, argv, message):
    code, _, err = run_cli("-a", "fmnist_mobilenet", *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def a4w4_mobilenet(point: str, images: torch.Tensor, arch: str = "fmnist_mobilenet"):
    """``arch`` (fmnist_mobilenet) with 4-bit per-tensor activations at ``point`` and 4-bit per-channel weights."""
    from inference import models
    from pytorch_quantizer.quantizers.config import ActQuantPoint, QuantConfig, TensorQuantSpec
    from pytorch_quantizer.model.quantized_model import QuantizedModel

    config = QuantConfig(activations=TensorQuantSpec(bits=4), weights=TensorQuantSpec(bits=4, per_channel=True),
                         act_quant_point=ActQuantPoint(point))
    return QuantizedModel(models.create_model(arch).eval(), config, images[:2])


def assert_same_rounding_with_and_without_chaining(learner, point: str, options) -> None:
    images = torch.randn(24, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    learned = []
    for reuse_chained in (False, True):
        with a4w4_mobilenet(point, images) as quantized:
            results = learner(quantized, images, options, reuse_chained=reuse_chained)
            learned.append({name: result.up for name, result in results.items()})
            # the model's own parameters were frozen while learning, and are given back as they were
            assert all(parameter.requires_grad and parameter.grad is None for parameter in quantized.model.parameters())
    assert learned[0].keys() == learned[1].keys() and len(learned[0]) == 26
    assert all(torch.equal(learned[0][name], learned[1][name]) for name in learned[0])


@pytest.mark.parametrize("point", ["output", "input"])
def test_chained_blocks_take_their_inputs_from_the_block_before_with_the_same_rounding(point):
    from pytorch_quantizer.methods.reconstruction import RoundingOptions, blocks_in_order, chained_blocks, learn_block_rounding

    images = torch.randn(4, 1, 28, 28)
    with a4w4_mobilenet(point, images) as quantized:
        _, order = blocks_in_order(quantized, images)
        # the stem runs first and the classifier reads the pooled features, not a block's output
        assert chained_blocks(quantized.model, images, order) == {f"features.{index}" for index in range(1, 10)}
    assert_same_rounding_with_and_without_chaining(learn_block_rounding, point, RoundingOptions(3, 8, 0, 0.5))


@pytest.mark.parametrize("point", ["output", "input"])
def test_adaround_takes_a_layers_inputs_from_its_block_with_the_same_rounding(point):
    from pytorch_quantizer.methods.reconstruction import RoundingOptions, learn_model_rounding

    assert_same_rounding_with_and_without_chaining(learn_model_rounding, point, RoundingOptions(3, 8, 0))


@pytest.mark.parametrize("point, arch", [("output", "fmnist_mobilenet"), ("input", "fmnist_mobilenet"),
                                         ("output", "fmnist_resnet20")])
def test_a_layers_input_taken_through_its_block_is_the_one_the_whole_model_gives(point, arch):
    """fmnist_resnet20's bare conv1 is followed by an in-place ReLU: its block's output tensor is the
    next block's input with other values, which must not count as chained."""
    from pytorch_quantizer.methods.reconstruction import BlockInputs, blocks_in_order, inputs_within_block, layer_inputs

    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with a4w4_mobilenet(point, images, arch) as quantized:
        blocks, order = blocks_in_order(quantized, images)
        block_inputs = BlockInputs(quantized, images, order, 8, reuse_chained=True)
        for block_name in order:
            float_inputs, quantized_inputs = block_inputs.of(block_name)
            block = quantized.model.get_submodule(block_name)
            for name in blocks[block_name]:
                relative = name[len(block_name) + 1:]
                with quantized.float_model() as model:
                    assert torch.equal(inputs_within_block(block, relative, float_inputs, 8),
                                       layer_inputs(model, name, images, 8))
                with quantized.measures_paused():
                    assert torch.equal(inputs_within_block(block, relative, quantized_inputs, 8),
                                       layer_inputs(quantized.model, name, images, 8))


class BareConvNet(nn.Module):
    """A conv outside any container (a block of its own) followed by a ReLU6, then a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_a_bare_layer_is_reconstructed_after_the_activation_fused_into_its_output():
    """The block of a bare conv ends before its ReLU6; its quantized output is clamped by the fused
    output quantization, so the learner must compare both sides after the ReLU6: the error it
    reports is the one of the activation's output in the model, and the learning lowers it."""
    from pytorch_quantizer.methods.reconstruction import RoundingOptions, learn_block_rounding
    from pytorch_quantizer.model.calibration import collect_statistics, reduced
    from pytorch_quantizer.model.quantized_model import QuantizedModel
    from pytorch_quantizer.quantizers.config import QuantConfig, TensorQuantSpec

    torch.manual_seed(0)
    model = BareConvNet().eval()
    with torch.no_grad():
        model.conv.bias.fill_(-0.5)   # about half of the pre-activations negative
    images = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    config = QuantConfig(activations=TensorQuantSpec(bits=8), weights=TensorQuantSpec(bits=3, per_channel=True))
    captured = []
    with QuantizedModel(model, config, images[:2]) as quantized:
        quantized.use_statistics(reduced(collect_statistics(quantized, [images], torch.device("cpu")), "mean",
                                         quantized.kept_layers()))
        result = learn_block_rounding(quantized, images, RoundingOptions(200, 16))["conv"]
        handle = quantized.model.act.register_forward_hook(lambda _module, _args, output: captured.append(output))
        with torch.no_grad():
            quantized.model(images)
            with quantized.float_model() as float_model:
                float_model(images)
        handle.remove()
    assert result.learned_error == pytest.approx(float((captured[0] - captured[1]).square().mean()), rel=1e-4)
    assert result.learned_error < result.nearest_error
