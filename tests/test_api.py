"""The public API on models the library has never seen: a small CNN defined here (grouped conv,
residual add, SiLU, adaptive pooling, Linear) and torchvision's mobilenet_v3_small with random
weights; each quantized, evaluated, saved and loaded in a few lines."""
import copy
import logging

import pytest
import torch
import torchvision
from torch import nn

import pytorch_quantizer as pq
from model_factories import SmallCNN, settled


def images(count: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def fresh_copy(model: SmallCNN) -> SmallCNN:
    """A new instance with ``model``'s weights, as a user's next session would build it."""
    fresh = SmallCNN()
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.square().mean() / (reference - approximation).square().mean()))


@pytest.fixture(scope="module")
def small_cnn():
    return settled(SmallCNN())


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return settled(torchvision.models.mobilenet_v3_small(weights=None), size=96)


def test_a_small_cnn_of_our_own_at_w8a8_static_and_w4a8_block_reconstruction(small_cnn, tmp_path):
    calibration, test = [images(16, 32, seed) for seed in range(3)], images(32, 32, 9)
    labels = small_cnn(test).argmax(dim=1)
    w8a8 = pq.QuantConfig(weights=pq.TensorQuantSpec(8, per_channel=True), activations=pq.TensorQuantSpec(8))
    qmodel = pq.quantize(small_cnn, w8a8, calibration=calibration)
    accuracy, fidelity = pq.evaluate(qmodel, [(test, labels)], reference=small_cnn)
    pq.save(qmodel, tmp_path / "small.w8a8.pt")
    reloaded = pq.load(fresh_copy(small_cnn), tmp_path / "small.w8a8.pt")
    assert torch.equal(reloaded(test), qmodel(test))
    assert fidelity.top1_agreement >= 90 and accuracy.top1 >= 90   # labels: the float model's own classes
    with torch.no_grad():
        assert sqnr_db(small_cnn(test), qmodel(test)) > 25
    assert qmodel.report.statistics == "calibrated" and not qmodel.report.unquantized_layers
    w4a8 = pq.QuantConfig(weights=pq.TensorQuantSpec(4, per_channel=True), activations=pq.TensorQuantSpec(8))
    block = pq.quantize(small_cnn, w4a8, calibration=calibration,
                        methods=pq.Methods(rounding="block", rounding_steps=30, rounding_batch=16))
    rounding = block.report.rounding
    assert rounding["rounding_learned_error"] <= rounding["rounding_nearest_error"]
    pq.save(block, tmp_path / "small.w4a8.pt")
    assert torch.equal(pq.load(fresh_copy(small_cnn), tmp_path / "small.w4a8.pt")(test), block(test))


def test_learned_step_sizes_move_at_the_chosen_adam_rate(small_cnn):
    """Adam moves a parameter by about its rate per step (at most ~3x, (1 - beta1) / sqrt(1 - beta2)),
    here annealed along a cosine: the published 4e-5 keeps 10 steps' moves within 1.3e-3, a rate of
    1e-2 goes beyond."""
    calibration = [images(16, 32, seed) for seed in range(2)]
    w4a4 = pq.QuantConfig(weights=pq.TensorQuantSpec(4, per_channel=True), activations=pq.TensorQuantSpec(4))

    def scales(step_size_lr):
        methods = pq.Methods(rounding="block", rounding_steps=10, rounding_batch=16, learn_step_sizes=True,
                             step_size_lr=step_size_lr)
        return pq.quantize(small_cnn, w4a4, calibration=calibration, methods=methods).state.activation_scales

    start, published, fast = scales(1e-12), scales(None), scales(1e-2)
    assert start and start.keys() == published.keys() == fast.keys()
    moved = {name: max(float((run[name] - start[name]).abs().max()) for name in start) for name, run in
             (("published", published), ("fast", fast))}
    assert moved["published"] <= 3.2 * 4e-5 * 10 < moved["fast"]


def test_loading_into_other_weights_or_with_another_recipe_is_refused(small_cnn, tmp_path):
    config = pq.QuantConfig(weights=pq.TensorQuantSpec(4, per_channel=True), activations=pq.TensorQuantSpec(8))
    path = pq.save(pq.quantize(small_cnn, config, calibration=[images(8, 32, 1)]), tmp_path / "q.pt")
    other = copy.deepcopy(small_cnn)
    with torch.no_grad():
        other.fc.weight[0, 0] += 1e-3
    with pytest.raises(pq.QuantizationError, match="made for other weights"):
        pq.load(other, path)
    w8 = pq.QuantConfig(weights=pq.TensorQuantSpec(8, per_channel=True), activations=pq.TensorQuantSpec(8))
    with pytest.raises(pq.QuantizationError, match="another recipe: its weights is"):
        pq.load(small_cnn, path, config=w8)
    assert pq.load(small_cnn, path, config=config).config == config


def test_the_caller_model_is_untouched_and_remove_gives_the_float_model_back(small_cnn):
    before = {name: value.clone() for name, value in small_cnn.state_dict().items()}
    test = images(8, 32, 3)
    with torch.no_grad():
        float_logits = small_cnn(test)
    config = pq.QuantConfig(weights=pq.TensorQuantSpec(4), activations=pq.TensorQuantSpec(4))
    with pq.quantize(small_cnn, config, example_input=test) as qmodel:   # ranges of each batch
        assert qmodel.report.statistics == "per batch"
        with torch.no_grad():
            assert sqnr_db(float_logits, qmodel(test)) < 30
    with pytest.raises(pq.QuantizationError, match="was removed"):
        qmodel(test)
    with torch.no_grad():
        assert torch.allclose(qmodel.module(test), float_logits, atol=1e-5)  # BN folded, float weights back
    assert all(torch.equal(before[name], value) for name, value in small_cnn.state_dict().items())
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in small_cnn.modules())


def test_layers_the_simulator_does_not_quantize_run_in_float_and_are_listed(caplog):
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.mix = nn.Conv1d(8, 8, 1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = self.conv(x).flatten(2)
            return self.fc(self.mix(y).mean(dim=2))

    config = pq.QuantConfig(weights=pq.TensorQuantSpec(8), activations=pq.TensorQuantSpec(8))
    with caplog.at_level(logging.WARNING, logger="pytorch_quantizer"):
        qmodel = pq.quantize(WithConv1d().eval(), config, calibration=[images(4, 16, 0)])
    assert qmodel.report.unquantized_layers == ["mix"]
    assert "run in float: mix" in caplog.text


def test_mobilenet_v3_small_with_random_weights(mobilenet, tmp_path):
    calibration, test = [images(8, 96, seed) for seed in range(2)], images(8, 96, 7)
    w8a8 = pq.QuantConfig(weights=pq.TensorQuantSpec(8, per_channel=True), activations=pq.TensorQuantSpec(8))
    qmodel = pq.quantize(mobilenet, w8a8, calibration=iter(calibration))   # a generator is taken too
    with torch.no_grad():
        reference, logits = mobilenet(test), qmodel(test)
    _, fidelity = pq.evaluate(qmodel, [(test, reference.argmax(dim=1))], reference=mobilenet)
    assert sqnr_db(reference, logits) > 15 and fidelity.top1_agreement >= 75
    pq.save(qmodel, tmp_path / "mobilenet.w8a8.pt")
    fresh = torchvision.models.mobilenet_v3_small(weights=None)
    fresh.load_state_dict(mobilenet.state_dict())
    with torch.no_grad():
        assert torch.equal(pq.load(fresh.eval(), tmp_path / "mobilenet.w8a8.pt")(test), logits)
    w4a8 = pq.QuantConfig(weights=pq.TensorQuantSpec(4, per_channel=True), activations=pq.TensorQuantSpec(8))
    block = pq.quantize(mobilenet, w4a8, calibration=calibration[:1],
                        methods=pq.Methods(rounding="block", rounding_steps=3, rounding_batch=8))
    assert block.report.rounding["rounding_layers"] == len(block.state.rounding) > 40
    pq.save(block, tmp_path / "mobilenet.w4a8.pt")
    with torch.no_grad():
        assert torch.equal(pq.load(fresh.eval(), tmp_path / "mobilenet.w4a8.pt")(test), block(test))
    with torch.no_grad():
        fresh.classifier[3].bias[0] += 1
    with pytest.raises(pq.QuantizationError, match="made for other weights"):
        pq.load(fresh, tmp_path / "mobilenet.w4a8.pt")


@pytest.mark.parametrize("make, message", [
    (lambda: pq.TensorQuantSpec(4, bit_allocation=True, clipping="laplace"), "set per_channel=True"),
    (lambda: pq.QuantConfig(activations=pq.TensorQuantSpec(4, kind=pq.WeightKind.APOT, per_channel=True),
                            act_quant_point=pq.ActQuantPoint.INPUT), "set activations.per_channel=False"),
    (lambda: pq.Methods(qdrop=0.5), "rounding='block'"),
    (lambda: pq.Methods(rounding="block", step_size_lr=1e-3), "set learn_step_sizes=True"),
    (lambda: pq.Methods(rounding="block", learn_step_sizes=True, step_size_lr=0.0), "must be positive, got 0.0"),
    (lambda: pq.Methods(rounding="learned"), "Methods.rounding 'learned'"),
    (lambda: pq.quantize(nn.Linear(4, 2), pq.QuantConfig(weights=pq.TensorQuantSpec(8))), "calibration="),
    (lambda: pq.quantize(nn.Linear(4, 2), pq.QuantConfig(weights=pq.TensorQuantSpec(8, kind=pq.WeightKind.APOT)),
                         example_input=torch.zeros(1, 4), methods=pq.Methods(rounding="adaround")),
     "integer-grid weights"),
])
def test_library_errors_are_one_type_and_name_config_fields_not_flags(make, message):
    with pytest.raises(pq.QuantizationError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        make()
    assert not any(flag in str(raised.value) for flag in ("-pcq", "--", "-qw", "-sm", "-baa"))


APOT, N2UQ, INT = pq.WeightKind.APOT, pq.WeightKind.N2UQ, pq.WeightKind.INT


@pytest.mark.parametrize("config, methods", [
    (pq.QuantConfig(activations=pq.TensorQuantSpec(4, kind=APOT), weights=pq.TensorQuantSpec(4, kind=APOT),
                    act_quant_point=pq.ActQuantPoint.INPUT), pq.Methods()),
    (pq.QuantConfig(activations=pq.TensorQuantSpec(2, kind=N2UQ), weights=pq.TensorQuantSpec(2, kind=N2UQ),
                    act_quant_point=pq.ActQuantPoint.INPUT), pq.Methods(qat_epochs=1)),
    (pq.QuantConfig(activations=pq.TensorQuantSpec(4), weights=pq.TensorQuantSpec(4, per_channel=True),
                    bias_correct_activations=True, departures=pq.Departures(bca_folded=True)), pq.Methods()),
    (pq.QuantConfig(activations=pq.TensorQuantSpec(8), weights=pq.TensorQuantSpec(4)),
     pq.Methods(equalize=True, rounding="adaround", rounding_steps=10, rounding_batch=8)),
], ids=["apot-calibrated", "n2uq-qat", "bca-folded", "equalize-adaround"])
def test_every_state_a_recipe_learns_is_saved_and_reloads_to_identical_logits(small_cnn, tmp_path, config, methods):
    calibration = [images(8, 32, seed) for seed in range(2)]
    training = [(batch, torch.randint(10, (8,), generator=torch.Generator().manual_seed(1))) for batch in calibration]
    qmodel = pq.quantize(small_cnn, config, calibration=calibration, methods=methods, training=training)
    test = images(8, 32, 5)
    with torch.no_grad():
        logits = qmodel(test)
    reloaded = pq.load(fresh_copy(small_cnn), pq.save(qmodel, tmp_path / "state.pt"))
    with torch.no_grad():
        assert torch.equal(reloaded(test), logits)
    assert reloaded.methods == methods and reloaded.config == config


def test_export_onnx_needs_fixed_ranges_and_writes_the_qdq_model(small_cnn, tmp_path):
    config = pq.QuantConfig(weights=pq.TensorQuantSpec(8, per_channel=True), activations=pq.TensorQuantSpec(8))
    exported = pq.export_onnx(pq.quantize(small_cnn, config, calibration=[images(8, 32, 0)]), tmp_path / "m.onnx")
    assert exported.model_path.is_file() and exported.encodings_path.is_file() and exported.quantized_tensors >= 10
    per_batch = pq.quantize(small_cnn, config, example_input=images(2, 32, 0))
    with pytest.raises(pq.QuantizationError, match="quantize with calibration images"):
        pq.export_onnx(per_batch, tmp_path / "n.onnx")
