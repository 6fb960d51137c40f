"""Every file a user gives is checked for types, keys, shapes, dtypes, value ranges and finiteness:
statistics edited with their checksum recomputed (so only the consistency checks can catch them),
and --weights state dicts with NaN / Inf, wrong shapes, other architectures and garbage. Each
problem is a one-line QuantizationError naming the file and the layer / key."""
import copy
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import rewrite_statistics
from inference.models import create_model
from pytorch_quantizer.model import quantized_model as transform
from pytorch_quantizer.quantizers.config import QuantConfig, TensorQuantSpec
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.formats.stats_io import StatisticsFile, load_statistics, save_statistics
from pytorch_quantizer.model.calibration import collect_statistics

ARCH = "fmnist_resnet20"
LAYER = "layer1.0.conv1"
FIX = f"collect statistics for {ARCH} again with -sm collect"
CONFIG = QuantConfig(activations=TensorQuantSpec(4, True, "laplace"), weights=TensorQuantSpec(4, True, "laplace"),
                     keep_8bit=("conv1", "fc"))


def one_line_error(call, match: str, path) -> str:
    with pytest.raises(QuantizationError, match=match) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    return message


# --- statistics ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stats_source(tmp_path_factory):
    """A real statistics file (two calibration batches) and the layer names a run needs."""
    torch.manual_seed(0)
    model = create_model(ARCH, random_init=True).eval()
    batch = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), transform.QuantizedModel(model, CONFIG, batch[:2]) as quantized:
        accumulators = collect_statistics(quantized, [(batch[:8], None), (batch[8:], None)], torch.device("cpu"))
    path = tmp_path_factory.mktemp("stats") / f"{ARCH}.stats.pt"
    save_statistics(StatisticsFile(ARCH, 16, True, "input", "laplace", accumulators), path)
    return path, sorted(accumulators)


def rewritten(source, tmp_path, edit):
    """The statistics file after ``edit(payload)``, its checksum recomputed as a forger would."""
    return rewrite_statistics(source, tmp_path / "edited.stats.pt", edit)


def load(path, layers, per_channel=True):
    return load_statistics(path, ARCH, per_channel, "input", layers, FIX, ("-pcq_a", "--act-quant-point"))


def set_entry(key, value, layer=LAYER):
    def edit(payload):
        payload["layers"][layer][key] = value(payload["layers"][layer][key]) if callable(value) else value
    return edit


def with_value(index_value):
    def change(tensor):
        tensor = tensor.clone()
        tensor[0] = index_value
        return tensor
    return change


def drop(*keys, layer=LAYER):
    def edit(payload):
        for key in keys:
            del payload["layers"][layer][key]
    return edit


STATISTICS_CASES = {
    "nan": (set_entry("sum.max", with_value(float("nan"))), f"layer {LAYER} statistic sum.max holds NaN/Inf"),
    "inf": (set_entry("ext.b", with_value(float("inf"))), f"layer {LAYER} statistic ext.b holds NaN/Inf"),
    "zero count": (set_entry("count", torch.tensor(0)), f"layer {LAYER} batch count is 0, not a positive"),
    "negative count": (set_entry("count", torch.tensor(-3)), f"layer {LAYER} batch count is -3"),
    "float count": (set_entry("count", torch.tensor(2.0)), f"layer {LAYER} batch count is a float32 tensor"),
    "vector count": (set_entry("count", torch.tensor([2, 2])), f"layer {LAYER} batch count is an int64 tensor of shape \\(2,\\)"),
    "no count": (drop("count"), f"layer {LAYER} lacks its batch count"),
    "missing ext": (drop("ext.std"), f"layer {LAYER} lacks statistic ext.std \\(its pair sum.std"),
    "missing statistic": (drop("sum.b", "ext.b"), f"layer {LAYER} lacks statistic sum.b"),
    "unknown entry": (set_entry("sum.median", torch.zeros(16, dtype=torch.float64)), f"layer {LAYER} has an entry sum.median"),
    "half range": (set_entry("sum.extra.mse.lo", torch.zeros(16, dtype=torch.float64)), f"layer {LAYER} lacks statistic"),
    "shape": (set_entry("sum.mean", lambda tensor: tensor[:15]), f"layer {LAYER} statistic sum.mean has shape \\(15,\\), the layer's other statistics \\(16,\\)"),
    "matrix": (set_entry("ext.max", lambda tensor: tensor.reshape(4, 4)), f"layer {LAYER} statistic ext.max has shape \\(4, 4\\)"),
    "dtype": (set_entry("sum.max", lambda tensor: tensor.long()), f"layer {LAYER} statistic sum.max has dtype int64, not a floating type"),
    "negative std": (set_entry("ext.std", with_value(-1.0)), f"layer {LAYER} statistic ext.std is negative"),
    "min above max": (set_entry("ext.min", with_value(1e6)), f"layer {LAYER} statistic ext.min exceeds ext.max"),
    "fraction": (set_entry("ext.positive_fraction", with_value(1.5)), f"layer {LAYER} statistic ext.positive_fraction lies outside \\[0, 1\\]"),
    "fraction sum": (set_entry("sum.positive_fraction", with_value(7.0)), f"layer {LAYER} statistic sum.positive_fraction lies outside \\[0, the batch count 2\\]"),
    "state not a dict": (lambda payload: payload["layers"].__setitem__(LAYER, [1, 2]), f"layer {LAYER} is a list, not a dict of tensors"),
    "value not a tensor": (set_entry("sum.max", [1.0, 2.0]), f"layer {LAYER} entry sum.max is a list, not a tensor"),
    "layers not a dict": (lambda payload: payload.__setitem__("layers", [1]), "layers are a list, not a dict keyed by layer name"),
    "negative images": (lambda payload: payload.__setitem__("calibration_images", -1), "metadata calibration_images is -1, not a non-negative integer"),
    "images as text": (lambda payload: payload.__setitem__("calibration_images", "16"), "metadata calibration_images is '16'"),
    "images as tensor": (lambda payload: payload.__setitem__("calibration_images", torch.tensor(16)), "metadata calibration_images is tensor"),
    "per_channel as text": (lambda payload: payload.__setitem__("per_channel", "yes"), "metadata per_channel is 'yes', not true or false"),
    "model as number": (lambda payload: payload.__setitem__("model", 3), "metadata model is 3, not a string"),
}


@pytest.mark.parametrize("case", list(STATISTICS_CASES))
def test_edited_statistics_with_a_recomputed_checksum_are_refused(stats_source, tmp_path, case):
    source, layers = stats_source
    edit, match = STATISTICS_CASES[case]
    path = rewritten(source, tmp_path, edit)
    message = one_line_error(lambda: load(path, layers), match, path)
    assert message.endswith(FIX)


def test_a_per_tensor_file_holds_one_value_per_statistic(stats_source, tmp_path):
    source, layers = stats_source
    path = rewritten(source, tmp_path, lambda payload: payload.__setitem__("per_channel", False))
    one_line_error(lambda: load(path, layers, per_channel=False),
                   "layer layer1.0.conv1 statistics have shape \\(16,\\) in a per-tensor statistics file", path)


def test_sound_statistics_load_and_reduce(stats_source, tmp_path):
    source, layers = stats_source
    path = rewritten(source, tmp_path, lambda payload: None)
    loaded = load(path, layers)
    assert loaded.calibration_images == 16 and loaded.layers[LAYER].batches == 2
    assert torch.isfinite(loaded.layers[LAYER].reduce("mean").b).all()


def test_statistics_version_of_another_type_and_a_folder_are_refused(stats_source, tmp_path):
    source, layers = stats_source
    path = rewritten(source, tmp_path, lambda payload: payload.__setitem__("version", "3"))
    one_line_error(lambda: load(path, layers), "has statistics format version '3', this tool reads 3", path)

    def earlier_format(payload):
        payload["version"] = 2
        del payload["weights_fingerprint"], payload["recipe"]

    earlier = rewritten(source, tmp_path, earlier_format)
    one_line_error(lambda: load(earlier, layers), r"was written by an earlier version of this tool \(statistics format "
                                                  r"2\), which did not record the weights it was collected for", earlier)
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    message = one_line_error(lambda: load(folder, layers), "is a folder, not a file", folder)
    assert "does not exist" not in message


def test_a_tensor_numpy_cannot_hold_fails_the_checksum_not_the_loader(stats_source, tmp_path):
    source, layers = stats_source
    payload = torch.load(source, weights_only=True)
    payload["layers"][LAYER]["sum.max"] = payload["layers"][LAYER]["sum.max"].bfloat16()
    path = tmp_path / "bf16.pt"
    torch.save(payload, path)
    one_line_error(lambda: load(path, layers), "fails its checksum", path)


# --- weights ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return create_model(ARCH, random_init=True).state_dict()


def edited_state(state, key, change):
    edited = copy.copy(state)
    edited[key] = change(state[key].clone())
    return edited


def nan_at(count):
    def change(tensor):
        tensor.view(-1)[:count] = float("nan")
        return tensor
    return change


def other_architecture(_):
    return create_model("fmnist_mobilenet", random_init=True).state_dict()


WEIGHT_CASES = {
    "nan": (lambda s: edited_state(s, "conv1.weight", nan_at(1)), "weights file .*: entry conv1.weight holds 1 NaN/Inf value \\(of 144\\); pass finite weights"),
    "inf": (lambda s: edited_state(s, "layer2.0.bn1.running_var", lambda t: t.fill_(float("inf"))),
            "entry layer2.0.bn1.running_var holds 32 NaN/Inf values \\(of 32\\)"),
    "not a tensor": (lambda s: {**s, "fc.bias": [0.0] * 10}, "entry fc.bias is a list, not a tensor"),
    "integer key": (lambda s: {**s, 3: torch.zeros(1)}, "has a key 3 that is an int, not a parameter name"),
    "empty": (lambda s: {}, "holds no tensors \\(an empty state dict\\)"),
    "empty checkpoint": (lambda s: {"state_dict": {}}, "holds no tensors"),
    "list": (lambda s: list(s.values()), "does not hold a state dict of tensors but a list"),
    "shape": (lambda s: edited_state(s, "conv1.weight", lambda t: t[:8]),
              f"does not fit {ARCH}: conv1.weight has shape \\(8, 1, 3, 3\\), the model's \\(16, 1, 3, 3\\)"),
    "dtype": (lambda s: edited_state(s, "fc.weight", lambda t: t.int()),
              f"does not fit {ARCH}: fc.weight has dtype int32 \\(integer\\), the model's float32 \\(floating\\)"),
    "other architecture": (other_architecture,
                           (f"does not fit {ARCH}: \\d+ keys that {ARCH} lacks \\(first features.0.0.weight\\), "
                            f"\\d+ {ARCH} keys missing \\(first conv1.weight\\)")),
    "missing key": (lambda s: {key: value for key, value in s.items() if key != "fc.bias"},
                    f"does not fit {ARCH}: 1 {ARCH} key missing \\(first fc.bias\\)"),
    "extra key": (lambda s: {**s, "head.weight": torch.zeros(2)}, f"1 key that {ARCH} lacks \\(first head.weight\\)"),
    "data parallel": (lambda s: {f"module.{key}": value for key, value in s.items()}, "'module.' prefix of DataParallel"),
    "sparse": (lambda s: edited_state(s, "fc.weight", lambda t: t.to_sparse()), "entry fc.weight is a sparse_coo tensor"),
}


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_bad_weights_are_one_line_errors_naming_the_key(state, tmp_path, case):
    build, match = WEIGHT_CASES[case]
    path = tmp_path / "weights.pt"
    torch.save(build(state), path)
    one_line_error(lambda: create_model(ARCH, weights=path), match, path)


@pytest.mark.parametrize("content", [b'{"conv1.weight": [0.5]}\n', os.urandom(4096), b""])
def test_text_and_random_bytes_as_weights_are_refused(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    one_line_error(lambda: create_model(ARCH, weights=path), "corrupt, truncated or not a torch.save file", path)


def test_a_folder_as_weights_is_a_folder_not_a_missing_file(tmp_path):
    message = one_line_error(lambda: create_model(ARCH, weights=tmp_path), "is a folder, not a file", tmp_path)
    assert "does not exist" not in message


def test_sound_weights_in_a_checkpoint_dict_load(state, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": state, "epoch": 3}, path)
    assert torch.equal(create_model(ARCH, weights=path).conv1.weight, state["conv1.weight"])


# --- any bytes at all -----------------------------------------------------------------------------

FILE_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FILE_SETTINGS
@given(content=st.binary(max_size=2048))
def test_random_bytes_are_always_an_input_error(stats_source, tmp_path, content):
    _, layers = stats_source
    path = tmp_path / "random.pt"
    path.write_bytes(content)
    with pytest.raises(QuantizationError):
        create_model(ARCH, weights=path)
    with pytest.raises(QuantizationError):
        load(path, layers)


@FILE_SETTINGS
@given(data=st.data())
def test_damaged_statistics_load_or_give_an_input_error(stats_source, tmp_path, data):
    """Bytes of a real file overwritten anywhere: the result is the original statistics (an
    unread region) or an QuantizationError, never another exception."""
    source, layers = stats_source
    original = source.read_bytes()
    offset = data.draw(st.integers(0, len(original) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / "damaged.pt"
    path.write_bytes(original[:offset] + patch + original[offset + len(patch):])
    try:
        loaded = load(path, layers)
    except QuantizationError as error:
        assert "\n" not in str(error)
    else:
        assert loaded.layers[LAYER].batches == 2
