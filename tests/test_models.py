"""Model registry: every entry builds, names real first/last layers and reports its preprocessing;
weights load safely or fail with clear errors."""
import os

import pytest
import torch

from inference.errors import UserError
from pytorch_quantizer.errors import QuantizationError
from inference.models import (
    TORCHVISION_V1_FILES, create_model, get_model_spec, list_models, load_state_dict_file,
)

REQUIRED = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50", "resnet101",
            "vgg16", "vgg16_bn", "mobilenet_v2", "inception_v3", "fmnist_resnet20", "fmnist_mobilenet"}


def test_registry_has_required_models():
    assert REQUIRED <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_entry_builds_and_names_its_first_and_last_layers(name):
    spec = get_model_spec(name)
    model = create_model(name, random_init=True)
    modules = dict(model.named_modules())
    assert isinstance(modules[spec.first_layer], torch.nn.Conv2d)
    assert isinstance(modules[spec.last_layer], torch.nn.Linear)
    assert modules[spec.last_layer].out_features == spec.num_classes
    channels = modules[spec.first_layer].in_channels
    assert len(spec.preprocessing.mean) == len(spec.preprocessing.std) == channels
    size = spec.preprocessing.crop or 28
    if spec.preprocessing.crop is not None:
        assert spec.preprocessing.resize >= spec.preprocessing.crop
    with torch.inference_mode():
        logits = model(torch.zeros(1, channels, size, size))
    assert logits.shape == (1, spec.num_classes)


def test_torchvision_file_names_match_torchvision_v1_urls():
    import torchvision

    for name, file_name in TORCHVISION_V1_FILES.items():
        url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
        assert os.path.basename(url) == file_name


def test_preprocessing_of_efficientnet_lite_is_minus_one_to_one_with_own_crop():
    crops = {name: get_model_spec(name).preprocessing.crop for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")}
    assert crops == {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
    spec = get_model_spec("efficientnet_lite0").preprocessing
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                                  "fmnist_resnet20", "fmnist_mobilenet"])
def test_shipped_weights_load_strictly(name):
    model = create_model(name)
    assert not model.training
    spec = get_model_spec(name)
    state = load_state_dict_file(spec.default_weights())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].to(value.dtype))


def test_missing_torchvision_weights_name_the_file_and_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"resnet50-0676ba61\.pth.*--weights PATH"):
        create_model("resnet50")


def test_weights_flag_loads_a_state_dict(tmp_path):
    source = create_model("resnet18", random_init=True)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = create_model("resnet18", weights=path)
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("content, message", [
    (b"", "corrupt, truncated"),
    (b"not a checkpoint at all", "corrupt, truncated or not a torch.save file"),
    ("truncated", "corrupt, truncated"),
    ("exploit", "would execute pickled code"),
    ("other-arch", "does not fit resnet18"),
    ("not-tensors", "does not hold a state dict of tensors"),
])
def test_bad_weight_files_are_refused(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if content == "truncated":
        torch.save(create_model("fmnist_resnet20", random_init=True).state_dict(), path)
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "exploit":
        torch.save({"conv1.weight": Exploit()}, path)
    elif content == "other-arch":
        torch.save(create_model("fmnist_resnet20", random_init=True).state_dict(), path)
    elif content == "not-tensors":
        torch.save({"conv1.weight": [1, 2, 3]}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(QuantizationError, match=message):
        create_model("resnet18", weights=path)


def test_efficientnet_lite_pads_inside_its_convolutions_or_at_the_border_with_the_same_values_and_gradients():
    from efficientnet_lite_pytorch import EfficientNet
    from torch import nn

    from inference.models import build_efficientnet_lite
    from inference.same_padding import BorderZeroPad2d

    torch.manual_seed(0)
    padded = EfficientNet.from_name("efficientnet-lite0").eval()
    model = build_efficientnet_lite("efficientnet_lite0").eval()
    model.load_state_dict(padded.state_dict())
    pads = [module.static_padding for module in model.modules() if hasattr(module, "static_padding")]
    remaining = [pad.padding for pad in pads if isinstance(pad, nn.ZeroPad2d)]
    assert len(remaining) == 5 and all(left != right for left, right, _, _ in remaining)   # the stride-2 convs
    assert all(isinstance(pad, BorderZeroPad2d) for pad in pads if isinstance(pad, nn.ZeroPad2d))
    for layout in (torch.contiguous_format, torch.channels_last):
        images = torch.randn(2, 3, 224, 224).contiguous(memory_format=layout).requires_grad_(True)
        outputs = [network(images) for network in (model, padded)]
        assert torch.equal(outputs[0], outputs[1])
        grads = [torch.autograd.grad(output.square().sum(), images)[0] for output in outputs]
        assert torch.equal(grads[0], grads[1])
