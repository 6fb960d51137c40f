"""What ``-a`` names: a model of the registry (``models``), any torchvision classification model by
name (its ImageNet weights from the torch hub cache or ``--weights``), or a user's factory
``package.module:function`` that returns an ``nn.Module`` (with ``--weights``). Models outside the
registry are evaluated on ImageNet-style folders (``--data DIR``) with the preprocessing of their
torchvision weights, or of ``--input-size`` / ``--resize`` / ``--mean`` / ``--std``; their first and
last Conv2d / Linear layers (in module order) are kept at 8 bits by default, as the registry's are.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from inference.errors import UserError
from inference.models import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocessing, list_models, registered_spec, \
    torch_hub_checkpoint

DEFAULT_INPUT_SIZE = 224


def torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def resize_for(crop: int) -> int:
    """The short side resized before a centre crop, in ImageNet's ratio 256 / 224."""
    return round(crop * 256 / 224)


def gemm_layer_bounds(model) -> tuple[str, str, int]:
    """(first Conv2d / Linear layer, last one, its output count) in module order."""
    from pytorch_quantizer.model.graph import GEMM_LAYERS

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, GEMM_LAYERS)]
    if not layers:
        raise UserError(f"{type(model).__name__} has no Conv2d / Linear layer to quantize")
    last = layers[-1][1]
    return layers[0][0], layers[-1][0], getattr(last, "out_features", None) or last.out_channels


def torchvision_spec(name: str) -> ModelSpec:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    file_name = Path(weights.url).name
    first, last, _ = gemm_layer_bounds(torchvision.models.get_model(name, weights=None))
    return ModelSpec(
        name=name, dataset="imagenet", num_classes=len(weights.meta["categories"]),
        preprocessing=Preprocessing(transforms.resize_size[0], transforms.crop_size[0], tuple(transforms.mean),
                                    tuple(transforms.std), transforms.interpolation.value),
        first_layer=first, last_layer=last, weights_source=f"torchvision {weights} ({file_name})",
        build=lambda: torchvision.models.get_model(name, weights=None),
        default_weights=lambda: torch_hub_checkpoint(file_name),
        weights_hint=f"download {weights.url} into the torch hub cache")


def factory_spec(text: str) -> ModelSpec:
    """``package.module:function``: the function, called without arguments, builds the model."""
    from torch import nn

    module_name, _, function_name = text.partition(":")
    if not module_name or not function_name.isidentifier():
        raise UserError(f"-a {text}: name a factory as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"-a {text}: cannot import {module_name} ({error}); install it or add its folder to "
                        "PYTHONPATH") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise UserError(f"-a {text}: {module_name} has no function {function_name}")

    def build():
        model = factory()
        if not isinstance(model, nn.Module):
            raise UserError(f"-a {text}: {function_name}() returned {type(model).__name__}, not a torch.nn.Module")
        return model

    first, last, outputs = gemm_layer_bounds(build())
    return ModelSpec(
        name=text, dataset="imagenet", num_classes=outputs,
        preprocessing=Preprocessing(resize_for(DEFAULT_INPUT_SIZE), DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD),
        first_layer=first, last_layer=last, weights_source=f"factory {text}", build=build,
        default_weights=lambda: Path(f"<no default weights for {text}>"),
        weights_hint="pass the state dict of your trained model with --weights PATH")


@lru_cache(maxsize=8)
def model_spec(name: str, preprocessing: tuple | None = None) -> ModelSpec:
    """The spec of ``-a name``; ``preprocessing`` = (input size, resize, mean, std), each None for
    the model's own, replaces that of a model outside the registry."""
    spec = registered_spec(name)
    if spec is not None:
        if preprocessing is not None and any(value is not None for value in preprocessing):
            raise UserError(f"{name} is a registry model with its own preprocessing: drop --input-size / --resize / "
                            "--mean / --std")
        return spec
    if ":" in name:
        spec = factory_spec(name)
    elif name in torchvision_names():
        spec = torchvision_spec(name)
    else:
        raise UserError(f"unknown model {name!r}: choose one of the registry ({', '.join(list_models())}), a "
                        "torchvision classification model (e.g. mobilenet_v3_small), or package.module:function")
    return with_preprocessing(spec, preprocessing) if preprocessing is not None else spec


def with_preprocessing(spec: ModelSpec, preprocessing: tuple) -> ModelSpec:
    size, resize, mean, std = preprocessing
    current = spec.preprocessing
    crop = size or current.crop
    resized = resize or (resize_for(size) if size else current.resize)
    if resized < crop:
        raise UserError(f"--resize {resized} is below the input size {crop}: the centre crop needs resize >= size")
    return replace(spec, preprocessing=replace(current, resize=resized, crop=crop, mean=tuple(mean or current.mean),
                                               std=tuple(std or current.std)))
