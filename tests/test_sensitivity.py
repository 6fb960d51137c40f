"""Sensitivity analysis and mixed precision end to end: a layer made fragile ranks first, 8 bits
costs next to nothing, partial reruns equal whole ones, a plan meets its budget and reloads to
identical logits, and the CLI's bad budgets and layer names are one line."""
import json

import pytest
import torch
from torch import nn

import pytorch_quantizer as pq
from pytorch_quantizer.model.partial_runs import CachedRun, traced
from test_trust import FAST, one_error_line

CALIBRATION = [torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) for seed in range(2)]
PER_TENSOR = pq.QuantConfig(weights=pq.TensorQuantSpec(4), activations=pq.TensorQuantSpec(8))


class ChannelScale(nn.Module):
    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1))

    def forward(self, x):
        return x * self.scale


@pytest.fixture(scope="module")
def fragile():
    """A plain chain whose middle conv is made fragile: its output channel 0 is scaled up 64 times
    in its weights and back down after it (the float function is the same), so that its per-tensor
    weight grid is set by that channel and at 4 bits rounds every other channel's weights to 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          ChannelScale(torch.ones(8)), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    with torch.no_grad():
        before = model(CALIBRATION[0])
        model[2].weight[0] *= 64
        model[2].bias[0] *= 64
        model[3].scale[0, 0] = 1 / 64
        assert torch.allclose(model(CALIBRATION[0]), before, atol=1e-4)
    return model


def test_a_fragile_layer_ranks_first_and_8_bits_cost_nothing(fragile):
    report = pq.sensitivity(fragile, PER_TENSOR, CALIBRATION, bits=(4, 8), kinds=("weights", "activations"), images=16)
    assert report.worst(1, "weights", 4)[0][0] == "2"
    at_8 = [row.kl for row in report.rows if row.bits == 8 and row.kind == "weights"]
    assert max(at_8) < 1e-3 and min(row.agreement for row in report.rows if row.bits == 8) >= 90
    frame = report.to_frame()
    assert set(frame.kind) == {"weights", "activations"} and frame.sqnr_db.notna().all()


def test_partial_reruns_equal_whole_runs(fragile):
    images = CALIBRATION[0]
    graph = traced(fragile)
    assert graph is not None
    partial, whole = CachedRun(fragile, graph, images), CachedRun(fragile, None, images)
    doubled = lambda module, *args: 2 * module(*args)   # noqa: E731 - a perturbation at the layer
    for layer in ("0", "2", "5", "9"):
        assert torch.allclose(partial.replaced(layer, doubled), whole.replaced(layer, doubled), atol=1e-5)


def test_a_plan_meets_its_budget_and_its_saved_model_reloads(fragile, tmp_path):
    report = pq.sensitivity(fragile, PER_TENSOR, CALIBRATION, bits=(2, 4, 8), kinds=("weights",), images=16)
    plan = pq.mixed_precision(report, pq.Budget(weight_bits=5.0))
    assert plan.spent["mean_weight_bits"] <= 5.0
    assert dict((name, bits) for name, bits, _ in plan.layer_bits)["2"] == 8
    qmodel = pq.quantize(fragile, plan.config(PER_TENSOR), calibration=CALIBRATION)
    assert qmodel.quantized.plans["2"].weight.bits == 8
    reloaded = pq.load(fragile, pq.save(qmodel, tmp_path / "mixed.pt"))
    with torch.no_grad():
        assert torch.equal(reloaded(CALIBRATION[1]), qmodel(CALIBRATION[1]))


def test_cli_plan_is_saved_and_reused_with_identical_results(run_cli, tmp_path):
    recipe = (*FAST, "--qtype", "int8", "-qw", "int4", "-pcq_w", "-bcw", "--mp-plan", tmp_path / "plan.pt")
    chosen, reused = tmp_path / "chosen.json", tmp_path / "reused.json"
    code, stdout, stderr = run_cli(*recipe, "--mp-weight-bits", "4.5", "--sensitivity-images", "16",
                                   "--sensitivity-bits", "2", "4", "8", "-cs", "40", "--sensitivity", tmp_path / "sens.csv",
                                   "--results-json", chosen)
    assert code == 0, stderr
    assert "mixed precision: " in stdout and (tmp_path / "sens.csv").is_file() and (tmp_path / "sens.png").is_file()
    code, _, stderr = run_cli(*recipe, "--results-json", reused)
    assert code == 0, stderr
    first, second = json.loads(chosen.read_text()), json.loads(reused.read_text())
    assert first["mp_mean_weight_bits"] <= 4.5 and first["mp_mean_weight_bits"] == second["mp_mean_weight_bits"]
    assert (first["top1"], first["loss"]) == (second["top1"], second["loss"])
    assert "sensitivity_seconds" not in second          # the plan was read, not measured again
    layer_bits = first["quantization"]["layer_bits"]
    assert layer_bits == second["quantization"]["layer_bits"] and len(layer_bits) == 20


@pytest.mark.parametrize("argv, message", [
    (("--mp-weight-bits", "1.5"), "--mp-weight-bits 1.5 is below the least any plan spends"),
    (("--mp-weight-bits", "9"), "--mp-weight-bits 9 is above the most any plan can spend"),
    (("--mp-weight-bits", "4", "--layer-bits", "no_such_layer=8"), "--layer-bits no_such_layer: not a Conv2d / Linear"),
    (("--layer-bits", "fc=8"), "--layer-bits fixes layers of a mixed-precision plan"),
    (("--mp-plan", "no_such_plan.pt"), "--mp-plan no_such_plan.pt: no such file"),
    (("--mp-act-bits", "4", "--qtype", "f32"), "--mp-act-bits chooses bits of integer-grid activations"),
])
def test_bad_budgets_and_layer_names_are_one_line(run_cli, argv, message):
    measuring = ("-cs", "20", "--sensitivity-images", "8", "--sensitivity-bits", "2", "8", "--sensitivity-kinds",
                 "weights") if {"--mp-weight-bits", "--mp-act-bits", "--mp-gbops"} & set(argv) else ()
    code, _, stderr = run_cli(*FAST, "--qtype", "int8", "-qw", "int4", *measuring, *argv)
    one_error_line(code, stderr, message)


def test_a_plan_composes_with_aciq_equalization_bias_correction_and_learned_rounding(run_cli, tmp_path):
    results = tmp_path / "results.json"
    code, _, stderr = run_cli(*FAST, "--qtype", "int8", "-c", "laplace", "-qw", "int4", "-pcq_w", "-bcw", "--equalize",
                              "--mp-weight-bits", "3.5", "--sensitivity-images", "8", "--sensitivity-bits", "2", "4", "8",
                              "--sensitivity-kinds", "weights", "--reconstruct", "block", "--recon-iters", "2",
                              "-cs", "32", "--results-json", results)
    assert code == 0, stderr
    written = json.loads(results.read_text())
    chosen = {name: bits for name, bits, _ in written["quantization"]["layer_bits"]}
    assert set(chosen.values()) <= {2, 4, 8} and len(set(chosen.values())) > 1
    assert written["mean_weight_bits"] == pytest.approx(written["mp_mean_weight_bits"]) and written["mean_weight_bits"] <= 3.5
    assert written["rounding_layers"] > 0 and written["equalization.chains"] > 0
