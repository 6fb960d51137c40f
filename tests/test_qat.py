"""Quantization-aware fine-tuning of the other seeds' kinds: a step lowers the loss and changes the
weights, saved models reload to identical logits, the training curve reaches mlflow, and the QAT
flags refuse what they cannot do (exit 2, one line)."""
import json

import pytest
import torch

from inference import fashion_mnist
from inference.models import create_model
from pytorch_quantizer.methods import family_calibration, qat
from pytorch_quantizer.quantizers.config import ActQuantPoint, QuantConfig, TensorQuantSpec, WeightKind
from pytorch_quantizer.formats.qat_io import layer_shapes, load_qat, save_qat
from pytorch_quantizer.methods.trained_state import trained_state, use_trained_state
from pytorch_quantizer.model.quantized_model import QuantizedModel


@pytest.fixture(scope="module")
def fixed_batch():
    images, labels = fashion_mnist.load_split(fashion_mnist.DEFAULT_DIR, "train")
    dataset = fashion_mnist.InMemoryImages(images, labels)
    batch = [dataset[index] for index in range(64)]
    return torch.stack([image for image, _ in batch]), torch.tensor([int(label) for _, label in batch])


def w2a2(kind: WeightKind) -> QuantConfig:
    return QuantConfig(activations=TensorQuantSpec(2, kind=kind), weights=TensorQuantSpec(2, kind=kind),
                       act_quant_point=ActQuantPoint.INPUT, keep_8bit=("conv1", "fc"))


@pytest.mark.parametrize("kind", [WeightKind.APOT, WeightKind.N2UQ, WeightKind.DOREFA, WeightKind.BINARY])
def test_a_qat_step_changes_the_weights_and_lowers_the_loss_on_a_fixed_batch(fixed_batch, kind):
    torch.manual_seed(0)
    inputs, labels = fixed_batch
    config = w2a2(kind) if kind != WeightKind.BINARY else QuantConfig(
        activations=TensorQuantSpec(1, kind=kind), weights=TensorQuantSpec(1, kind=kind),
        act_quant_point=ActQuantPoint.INPUT, keep_8bit=("conv1", "fc"))
    model = create_model("fmnist_resnet20")
    with QuantizedModel(model, config, inputs[:2]) as quantized:
        quantized.family_activations.use(family_calibration.calibrate_activations(quantized, [(inputs, labels)], torch.device("cpu")))
        before = quantized.model.get_submodule("layer1.0.conv1").weight.detach().clone()
        outcome = qat.fine_tune(quantized, [(inputs, labels)], epochs=6, lr=1e-4, device=torch.device("cpu"))
        after = quantized.model.get_submodule("layer1.0.conv1").weight.detach()
        assert len(outcome.losses) == 6 and outcome.losses[-1] < outcome.losses[0]
        assert not torch.equal(before, after)
        assert not hasattr(quantized.model.get_submodule("layer1.0.conv1"), "parametrizations")
        with torch.no_grad():
            trained_loss = torch.nn.functional.cross_entropy(quantized.model(inputs), labels).item()
        assert trained_loss < outcome.losses[0]


def test_apot_alpha_is_learned_and_evaluation_uses_it(fixed_batch):
    inputs, labels = fixed_batch
    model = create_model("fmnist_resnet20")
    with QuantizedModel(model, w2a2(WeightKind.APOT), inputs[:2]) as quantized:
        quantized.family_activations.use(family_calibration.calibrate_activations(quantized, [(inputs, labels)], torch.device("cpu")))
        calibrated = quantized.family_activations.plans["layer2.0.conv1"].scale.clone()
        qat.fine_tune(quantized, [(inputs, labels)], epochs=3, lr=1e-2, device=torch.device("cpu"))
        assert quantized.family_activations.plans["layer2.0.conv1"].scale.item() != pytest.approx(calibrated.item(), rel=1e-6)


def test_a_saved_qat_model_reloads_to_identical_logits(fixed_batch, tmp_path):
    inputs, labels = fixed_batch
    config = w2a2(WeightKind.N2UQ)
    path = tmp_path / "qat.pt"
    with QuantizedModel(create_model("fmnist_resnet20"), config, inputs[:2]) as quantized:
        quantized.family_activations.use(family_calibration.calibrate_activations(quantized, [(inputs, labels)], torch.device("cpu")))
        qat.fine_tune(quantized, [(inputs, labels)], epochs=2, lr=1e-3, device=torch.device("cpu"))
        with torch.no_grad():
            trained = quantized.model(inputs)
        save_qat(path, trained_state(quantized), "fmnist_resnet20", "n2uq2/n2uq2", "f" * 64)
    with QuantizedModel(create_model("fmnist_resnet20"), config, inputs[:2]) as reloaded:
        use_trained_state(reloaded, load_qat(path, "fmnist_resnet20", "n2uq2/n2uq2", layer_shapes(reloaded), "fix", "f" * 64))
        with torch.no_grad():
            assert torch.equal(reloaded.model(inputs), trained)
    with QuantizedModel(create_model("fmnist_resnet20"), config, inputs[:2]) as other:
        with pytest.raises(Exception, match="was trained for 'fmnist_resnet20' with 'n2uq2/n2uq2', not fmnist_resnet20 "
                                            "with 'apot2'"):
            load_qat(path, "fmnist_resnet20", "apot2", layer_shapes(other), "fix")


def test_cli_qat_logs_the_training_curve_and_beats_post_training(run_cli, tmp_path):
    import mlflow

    results, saved = tmp_path / "results.json", tmp_path / "qat.pt"
    common = ("-a", "fmnist_resnet20", "-ss", "200", "-b", "100", "--qtype", "apot2", "-qw", "apot2")
    code, _, stderr = run_cli(*common, "-cs", "512", "--qat-epochs", "1", "--qat-batch-size", "64", "--qat-lr", "1e-3",
                              "--save-qat", saved, "--results-json", results, "-mlexp", "qat")
    assert code == 0, stderr
    trained = json.loads(results.read_text())
    assert len(trained["qat_losses"]) == 8 and trained["qat_epochs"] == 1
    run = mlflow.search_runs(experiment_names=["qat"]).iloc[0]
    history = mlflow.tracking.MlflowClient().get_metric_history(run.run_id, "qat.loss")
    assert [point.step for point in history] == list(range(8))
    assert [point.value for point in history] == pytest.approx(trained["qat_losses"])
    code, _, stderr = run_cli(*common, "--load-qat", saved, "--results-json", results)
    assert code == 0, stderr and json.loads(results.read_text())["top1"] == trained["top1"]
    code, _, stderr = run_cli(*common, "-cs", "512", "--results-json", results)
    assert code == 0, stderr
    assert trained["top1"] > json.loads(results.read_text())["top1"]


@pytest.mark.parametrize("argv, message", [
    (["--qtype", "int4", "-qw", "int4", "--qat-epochs", "1"], "--qat-epochs trains the other seeds' kinds"),
    (["--qtype", "apot4", "--qat-epochs", "1"], "--qat-epochs trains the other seeds' kinds"),
    (["--qtype", "apot4", "-qw", "apot4", "--qat-lr", "0.1"], "--qat-lr concerns fine-tuning: add --qat-epochs N"),
    (["-qw", "ternary", "--save-qat", "x.pt"], "--save-qat concerns fine-tuning: add --qat-epochs N"),
    (["-qw", "ternary", "--qat-epochs", "1", "--load-qat", "x.pt"], "drop --qat-epochs or --load-qat"),
    (["-qw", "ternary", "--qat-epochs", "1", "-bcw"], "-bcw / -vcw correct post-training rounding"),
    (["-qw", "ternary", "--qat-epochs", "-1"], "must be a non-negative integer"),
])
def test_refused_qat_flags_exit_2_with_one_line(run_cli, argv, message):
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", "-ss", "20", *argv)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr


def test_qat_without_a_training_split_names_the_fix(run_cli, tmp_path):
    code, _, stderr = run_cli("-a", "efficientnet_lite0", "-b", "4", "-ss", "4", "-qw", "ternary", "--qat-epochs", "1")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "--qat-epochs needs training images disjoint from the evaluated ones" in stderr
    assert "pass --calib-holdout N (labelled images held out of the evaluated set)" in stderr
    code, _, stderr = run_cli("-a", "efficientnet_lite0", "-b", "4", "-ss", "4", "-qw", "ternary", "--qat-epochs", "1",
                              "--calib-data", str(tmp_path))
    assert code == 2 and "--calib-data images are unlabelled" in stderr


def test_trained_weight_codes_relabel_the_levels_in_use():
    from pytorch_quantizer.model.layer_measures import value_codes

    values = torch.tensor([[0.5, -0.5, 0.5], [2.0, 2.0, -1.0]])
    assert value_codes(values, per_channel=True).tolist() == [[1, 0, 1], [1, 1, 0]]
    assert value_codes(values, per_channel=False).tolist() == [[2, 1, 2], [3, 3, 0]]
