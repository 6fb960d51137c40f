"""Property-based: whatever a saved file holds (rounding, QAT state, a saved quantized model), its
loader either returns state that is sound to use or refuses the file with one QuantizationError
line; nothing else escapes, and what is accepted runs."""
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytorch_quantizer as pq
from model_factories import SmallCNN, settled
from pytorch_quantizer.formats import qat_io, rounding_io

SHAPES = {"conv": torch.Size([4, 3]), "fc": torch.Size([2])}
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tensors(shape=None) -> st.SearchStrategy:
    """Tensors of the given (or a random) shape with any float values, or 0 / 1 values, or a non-tensor."""
    shapes = st.just(tuple(shape)) if shape is not None else st.lists(st.integers(0, 5), max_size=2).map(tuple)

    def filled(size, values):
        count = math.prod(size)
        return torch.tensor((values * (count // max(len(values), 1) + 1))[:count] if values else [0.0] * count,
                            dtype=torch.float32).reshape(size)

    return st.one_of(
        st.tuples(shapes, st.lists(FLOATS, min_size=1, max_size=12)).map(lambda drawn: filled(*drawn)),
        st.tuples(shapes, st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=12)).map(lambda d: filled(*d)),
        st.sampled_from([None, "text", 3, [0, 1]]))


def one_line(error: Exception) -> None:
    assert isinstance(error, pq.QuantizationError) and "\n" not in str(error), repr(error)


@SETTINGS
@given(layers=st.dictionaries(st.sampled_from(["conv", "fc", "other"]), st.one_of(
    tensors(SHAPES["conv"]), tensors(SHAPES["fc"]), tensors()), max_size=3))
def test_any_rounding_file_loads_as_0_1_roundings_of_the_right_shapes_or_is_refused(layers):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rounding.pt"
        torch.save({"format": "ptq-rounding", "version": 2, "model": "m", "weights_fingerprint": "f", "recipe": "r",
                    "layers": layers}, path)
        try:
            loaded, _ = rounding_io.load_rounding(path, "m", "r", SHAPES, "fix", "f")
        except Exception as error:  # noqa: BLE001 - the property: only one kind of error escapes
            one_line(error)
            return
    assert set(loaded) == set(SHAPES)
    assert all(up.shape == SHAPES[name] and bool(((up == 0) | (up == 1)).all()) for name, up in loaded.items())


@SETTINGS
@given(scale=tensors(), thresholds=tensors(), values=tensors())
def test_any_qat_activation_plan_loads_as_a_usable_plan_or_is_refused(scale, thresholds, values):
    layers = {"fc": {"weight": torch.ones(2, 3), "float_weight": torch.ones(2, 3)}}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "qat.pt"
        torch.save({"format": "ptq-qat", "version": 2, "model": "m", "weights_fingerprint": "f", "recipe": "r",
                    "layers": layers, "activation_plans": {"fc": {"scale": scale, "thresholds": thresholds,
                                                                  "values": values}}}, path)
        try:
            state = qat_io.load_qat(path, "m", "r", {"fc": (torch.Size([2, 3]), None)}, "fix", "f")
        except Exception as error:  # noqa: BLE001
            one_line(error)
            return
    quantized = state.activation_plans["fc"].apply(torch.linspace(-3, 3, 50))
    assert bool(torch.isfinite(quantized).all())


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = settled(SmallCNN())
    config = pq.QuantConfig(weights=pq.TensorQuantSpec(4, per_channel=True), activations=pq.TensorQuantSpec(8))
    calibration = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) for seed in range(2)]
    qmodel = pq.quantize(model, config, calibration=calibration,
                         methods=pq.Methods(rounding="adaround", rounding_steps=2, rounding_batch=8))
    path = pq.save(qmodel, tmp_path_factory.mktemp("saved") / "model.pt")
    return model, torch.load(path, weights_only=True)


def entries(payload: dict) -> list[tuple[str, str, str]]:
    """(section, layer, key) of every tensor of the saved statistics and rounding."""
    found = [("statistics", layer, key) for layer, state in payload["statistics"].items() for key in state]
    return found + [("rounding", layer, "") for layer in payload["rounding"]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.integers(min_value=0), replacement=tensors())
def test_any_edited_saved_model_loads_and_runs_or_is_refused(saved_model, choice, replacement):
    model, payload = saved_model
    section, layer, key = entries(payload)[choice % len(entries(payload))]
    edited = {**payload, section: {name: dict(value) if isinstance(value, dict) else value
                                   for name, value in payload[section].items()}}
    if key:
        edited[section][layer][key] = replacement
    else:
        edited[section][layer] = replacement
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(edited, path)
        try:
            qmodel = pq.load(model, path)
            with torch.no_grad():
                logits = qmodel(torch.randn(2, 3, 32, 32))
        except Exception as error:  # noqa: BLE001
            one_line(error)
            return
    assert bool(torch.isfinite(logits).all())
