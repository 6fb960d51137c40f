"""Learned weight rounding over a whole ``QuantizedModel``: AdaRound layer by layer, or
block by block (BRECQ, Li et al. 2021, with QDrop's random dropping of activation quantization,
Wei et al. 2022), in the order they run; inputs are taken from the quantized model as it stands
(earlier layers already rounded, activations quantized as the run's recipe does) and targets from
the float model on the same images.

A block is a child of an ``nn.Sequential`` / ``nn.ModuleList`` that holds integer-grid layers (an
inverted-residual block, a ResNet basic block); layers outside any are blocks of their own. Inside
a block the soft roundings of all its layers are learned together against the block's float
output, with its activations quantized straight-through (dropped to float per element with
probability ``drop``).

Both learners take inputs block by block (``BlockInputs``), AdaRound a layer's by running its block
on the block's inputs. Where a block reads exactly what the block before it returned (nothing runs
in between, as in EfficientNet-Lite's and MobileNet's chains of blocks), its float input is the
previous block's float output and its quantized input the previous block run on its own quantized
input, so it costs one block forward instead of a model forward up to it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pytorch_quantizer.methods import adaround
from pytorch_quantizer.methods.joint_blocks import joint_units, relative_output_errors
from pytorch_quantizer.model.weights import integer_grid_layers, use_weight_rounding, weight_correction, weight_grid


class _Captured(Exception):
    """Stops a forward pass once the wanted layer's input is taken."""


@dataclass(frozen=True)
class RoundingOptions:
    iterations: int
    batch: int
    seed: int = 0
    drop: float = 0.0   # QDrop probability inside blocks
    step_sizes: bool = False   # learn the block's activation step sizes with its rounding (LSQ)
    step_size_lr: float | None = None   # their Adam rate (None: adaround.STEP_SIZE_LEARNING_RATE)
    joint_blocks: int = 0   # pairs of chained blocks learned together (``joint_blocks.joint_units``)


def model_blocks(model: nn.Module, layers: list[str]) -> dict[str, list[str]]:
    """{block name: its layers among ``layers``}: the outermost children of Sequential / ModuleList
    containers that hold any of ``layers``; a layer in no such child is its own block."""
    containers = {name for name, module in model.named_modules() if isinstance(module, (nn.Sequential, nn.ModuleList))}
    blocks: dict[str, list[str]] = {}
    for layer in layers:
        parts = layer.split(".")
        owner = next((".".join(parts[:depth + 1]) for depth in range(len(parts) - 1)
                      if (".".join(parts[:depth]) if depth else "") in containers), layer)
        blocks.setdefault(owner, []).append(layer)
    return blocks


def execution_order(model: nn.Module, images: torch.Tensor, names: list[str]) -> list[str]:
    """``names`` in the order their modules run on ``images``."""
    order: list[str] = []
    _run_one_image(model, images, [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: order.append(name) if name not in order else None) for name in names])
    return order


def _run_one_image(model: nn.Module, images: torch.Tensor, handles: list) -> None:
    """A forward of the first image with ``handles``' hooks in place, removed afterwards."""
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _stopping_at(module: nn.Module, store: list[torch.Tensor]):
    """While open, a forward through ``module`` appends what the module reads (after any input
    quantization of its pre-hooks) and stops the pass."""
    def hook(_module, args, _output):
        store.append(args[0].detach())
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def parameters_frozen(module: nn.Module):
    """While open, the module's own parameters need no gradient: the learners differentiate the
    roundings (and step sizes) only, and every conv's backward then skips its bias gradient (about
    3 % of a learning step of Lite0) instead of summing it into ``.grad`` at every step."""
    changed = [parameter for parameter in module.parameters() if parameter.requires_grad]
    for parameter in changed:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in changed:
            parameter.requires_grad_(True)


def chained_blocks(model: nn.Module, images: torch.Tensor, names: list[str]) -> set[str]:
    """The blocks among ``names`` whose input, on one image, is the very tensor the block run just
    before them returned, unmodified: an in-place activation between them (a bare conv, then
    ``ReLU(inplace=True)``, then a block) returns the same tensor with other values, and its
    version counter tells."""
    chained: set[str] = set()
    last_output: list[tuple[torch.Tensor, int] | None] = [None]

    def before(name):
        def hook(_module, args):
            if args and last_output[0] is not None and args[0] is last_output[0][0] \
                    and args[0]._version == last_output[0][1]:
                chained.add(name)
        return hook

    def after(_module, _args, output):
        last_output[0] = (output, output._version) if isinstance(output, torch.Tensor) else None

    modules = [model.get_submodule(name) for name in names]
    handles = [module.register_forward_pre_hook(before(name)) for name, module in zip(names, modules)]
    handles += [module.register_forward_hook(after) for module in modules]
    _run_one_image(model, images, handles)
    return chained


def chained_in_both(quantized, images: torch.Tensor, order: list[str]) -> set[str]:
    """The blocks of ``order`` chained (``chained_blocks``) in the float model and in the quantized
    one alike."""
    with quantized.float_model() as model:
        chained = chained_blocks(model, images, order)
    with quantized.measures_paused():
        return chained & chained_blocks(quantized.model, images, order)


def _batched(function, inputs: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([function(inputs[start:start + batch]) for start in range(0, len(inputs), batch)])


def layer_inputs(model: nn.Module, name: str, images: torch.Tensor, batch: int) -> torch.Tensor:
    """What layer ``name`` reads on every image (batches of ``batch``), stopping each pass there."""
    store: list[torch.Tensor] = []
    with _stopping_at(model.get_submodule(name), store), torch.no_grad():
        for start in range(0, len(images), batch):
            try:
                model(images[start:start + batch])
            except _Captured:
                pass
    return torch.cat(store)


class BlockInputs:
    """The float and quantized inputs of each block on every image, asked for in execution order.

    A block in ``chained`` takes them from the block asked for just before it: its float input is
    that block's float output and its quantized input that block run (with whatever rounding is now
    in place) on its own quantized input. Any other block runs the model up to it, twice. Where
    blocks are learned in units (``learning_units``) only each unit's first block is asked for, and
    what it passes on is the whole unit's output. A bare layer that quantizes its own input
    (``act_quant_point=input``) passes nothing on, since its captured input is already quantized and
    running it again would quantize that twice.
    """

    def __init__(self, quantized, images: torch.Tensor, order: list[str], batch: int, reuse_chained: bool):
        self.quantized, self.images, self.batch = quantized, images, batch
        self.chained = chained_in_both(quantized, images, order) if reuse_chained else set()
        self._previous: tuple[nn.Module, torch.Tensor, torch.Tensor] | None = None
        self._previous_float_output: torch.Tensor | None = None

    def of(self, name: str, runs: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``name``'s float and quantized inputs; ``runs``: what the caller will run on them
        and the next chained block reads the output of (default: the block itself; a unit of joined
        blocks starting with it)."""
        quantized = self.quantized
        if self._previous is not None and name in self.chained:
            block, float_inputs, quantized_inputs = self._previous
            float_output = self._previous_float_output
            if float_output is None:
                with quantized.float_model():
                    float_output = _batched(block, float_inputs, self.batch)
            with quantized.measures_paused():
                inputs = (float_output, _batched(block, quantized_inputs, self.batch))
        else:
            with quantized.float_model() as model:
                float_inputs = layer_inputs(model, name, self.images, self.batch)
            with quantized.measures_paused():
                inputs = (float_inputs, layer_inputs(quantized.model, name, self.images, self.batch))
        passes_on = quantized.at_output or name not in quantized.plans
        runs = runs if runs is not None else quantized.model.get_submodule(name)
        self._previous = (runs, *inputs) if passes_on else None
        self._previous_float_output = None
        return inputs

    def float_output_is(self, output: torch.Tensor) -> None:
        """The float output of the block just asked for, when the caller has it (saves a pass)."""
        self._previous_float_output = output


def inputs_within_block(block: nn.Module, layer: str, block_inputs: torch.Tensor, batch: int) -> torch.Tensor:
    """What ``layer`` (a name relative to ``block``; "" for a block that is a bare layer) reads when
    ``block`` runs on ``block_inputs``. A bare layer's block inputs are its inputs already: running it
    again would apply its input hooks twice."""
    return layer_inputs(block, layer, block_inputs, batch) if layer else block_inputs


def blocks_in_order(quantized, images: torch.Tensor) -> tuple[dict[str, list[str]], list[str]]:
    """The blocks of the integer-grid layers (``model_blocks``) and their execution order."""
    layers = integer_grid_layers(quantized)
    blocks = model_blocks(quantized.model, layers)
    return blocks, execution_order(quantized.model, images, list(blocks))


def learn_model_rounding(quantized, images: torch.Tensor, options: RoundingOptions, bar=None,
                         reuse_chained: bool = True, share: adaround.DataShare | None = None
                         ) -> dict[str, adaround.RoundingResult]:
    """AdaRound every layer with integer-grid weights, in execution order; each learned rounding is
    put in place (``quantized.use_weight_rounding``) before the next layer's inputs are taken.
    ``bar(layer_names)`` wraps the layer loop (a progress bar) and may take ``set_postfix``.

    A layer's inputs are taken by running its block (``model_blocks``) on the block's inputs
    (``BlockInputs``), which ``reuse_chained`` takes from the block before where it can; the inputs
    are the same either way."""
    names = integer_grid_layers(quantized)
    names = execution_order(quantized.model, images, names)
    block_of = {layer: block for block, layers in model_blocks(quantized.model, names).items() for layer in layers}
    block_order = list(dict.fromkeys(block_of[name] for name in names))
    block_inputs = BlockInputs(quantized, images, block_order, options.batch, reuse_chained)
    current_block, float_block_inputs, quantized_block_inputs = None, None, None
    results = {}
    layers = bar(names) if bar is not None else names
    for name in layers:
        module = quantized.model.get_submodule(name)
        block_name = block_of[name]
        if block_name != current_block:
            current_block = block_name
            float_block_inputs, quantized_block_inputs = block_inputs.of(block_name)
        block, relative = quantized.model.get_submodule(block_name), _relative(block_name, name)
        float_weight = quantized.float_params[name][0]
        with quantized.float_model():
            float_inputs = inputs_within_block(block, relative, float_block_inputs, options.batch)
            targets = _batched(lambda batch: adaround.layer_output(module, float_weight, batch), float_inputs, options.batch)
        del float_inputs
        with quantized.measures_paused():
            inputs = inputs_within_block(block, relative, quantized_block_inputs, options.batch)
        with quantized.bypassed(), parameters_frozen(module):  # the layer's own hooks stay out of the learning passes
            result = adaround.learn_rounding(module, float_weight, weight_grid(quantized, name), inputs, targets,
                                             options.iterations, options.batch, options.seed, share=share,
                                             correction=weight_correction(quantized.config))
        use_weight_rounding(quantized, name, result.up)
        results[name] = result
        if hasattr(layers, "set_postfix"):
            layers.set_postfix(layer=name, nearest=f"{result.nearest_error:.3g}", learned=f"{result.learned_error:.3g}")
    return results


def _relative(block: str, layer: str) -> str:
    return layer[len(block) + 1:] if layer != block else ""


def initial_step_sizes(quantized, block_names: list[str]) -> dict[str, torch.Tensor]:
    """The step sizes of the GEMMLOWP activation grids inside the blocks, fixed by the statistics, as
    tensors to learn (none where the ranges come from each batch or the grid is mid-tread)."""
    if quantized.activation_stats is None:
        return {}
    scales = {}
    for name, plan in quantized.activation_plans().items():
        inside = any(name == block or name.startswith(block + ".") for block in block_names)
        if inside and plan.activation.kind.grid and name in quantized.activation_stats:
            grid = quantized.activation_plan(name)
            if not grid.mid_tread:
                scales[name] = grid.scale.detach().clone().float().requires_grad_(True)
    return scales


def activation_after(quantized, block_name: str, names: list[str]):
    """What the block's output goes through before anything else reads it, as f(output): the ReLU /
    ReLU6 (or equalization's clamp) fused after a block that is a bare layer, identity otherwise.
    Both sides of the reconstruction pass through it, as AdaRound's objective takes the activation in
    (Nagel et al. 2020, eq. 25): the bare layer's quantized output already lies in the activation's
    range (the fused output quantization clamps it), and fitting that to the unclamped float output
    would spend the learning on the negative pre-activations the activation discards."""
    if names != [block_name] or quantized.fused.kind(block_name) is None:
        return lambda output: output
    return lambda output: quantized.fused.apply(block_name, output)


def learning_units(quantized, images: torch.Tensor, blocks: dict[str, list[str]], order: list[str],
                   options: RoundingOptions, share: adaround.DataShare | None = None) -> list[list[str]]:
    """The blocks of ``order`` in learning units: each block alone, or with ``options.joint_blocks``
    the pairs of chained blocks whose output error rises most joined (``joint_blocks``)."""
    if not options.joint_blocks:
        return [[name] for name in order]
    containers = [name for name in order if blocks[name] != [name]]
    errors = relative_output_errors(quantized.model, images, containers, options.batch, quantized.float_model,
                                    quantized.measures_paused, share)
    joinable = chained_in_both(quantized, images, order) & set(containers)
    return joint_units(order, errors, joinable, options.joint_blocks)


def _unit_module(quantized, unit: list[str]) -> nn.Module:
    """What a unit runs: its block, or its blocks one after the other (they are chained)."""
    modules = [quantized.model.get_submodule(name) for name in unit]
    return modules[0] if len(unit) == 1 else nn.Sequential(*modules)


def _parameter_paths(blocks: dict[str, list[str]], unit: list[str]) -> dict[str, str]:
    """{layer: the path of its weight within the unit's module (``_unit_module``)}."""
    if len(unit) == 1:
        return {name: f"{_relative(unit[0], name)}.weight".lstrip(".") for name in blocks[unit[0]]}
    return {name: f"{index}.{_relative(block, name)}.weight" for index, block in enumerate(unit) for name in blocks[block]}


def learn_block_rounding(quantized, images: torch.Tensor, options: RoundingOptions, bar=None,
                         reuse_chained: bool = True, share: adaround.DataShare | None = None
                         ) -> dict[str, adaround.RoundingResult]:
    """BRECQ / QDrop: every block's layers' roundings learned together, blocks in execution order
    (with ``options.joint_blocks``, some consecutive blocks together: ``learning_units``).
    ``reuse_chained``: take a chained block's inputs from the block before it (see the module
    docstring) instead of running the model up to it; the inputs are the same either way. With
    ``share`` the images are this process's part of those of several (``adaround.DataShare``)."""
    blocks, order = blocks_in_order(quantized, images)
    units = learning_units(quantized, images, blocks, order, options, share)
    block_inputs = BlockInputs(quantized, images, order, options.batch, reuse_chained)  # asked for units' first blocks
    results = {}
    steps = bar(units) if bar is not None else units
    for unit in steps:
        module = _unit_module(quantized, unit)
        names = [name for block in unit for name in blocks[block]]
        float_inputs, inputs = block_inputs.of(unit[0], module)
        with quantized.float_model():
            float_outputs = _batched(module, float_inputs, options.batch)
        block_inputs.float_output_is(float_outputs)
        finish = activation_after(quantized, unit[-1], blocks[unit[-1]])
        targets = finish(float_outputs)
        del float_inputs, float_outputs
        weights = {name: quantized.float_params[name][0] for name in names}
        grids = {name: weight_grid(quantized, name) for name in names}
        paths = _parameter_paths(blocks, unit)

        def unit_output(rounded: dict[str, torch.Tensor], batch_inputs: torch.Tensor, module=module,
                        paths=paths, finish=finish):
            parameters = {paths[name]: weight for name, weight in rounded.items()}
            return finish(torch.func.functional_call(module, parameters, (batch_inputs,)))

        scales = initial_step_sizes(quantized, unit) if options.step_sizes else {}
        quantized.learning.scales = scales
        try:
            with quantized.measures_paused(), parameters_frozen(module):
                learned, _ = adaround.learn_soft_roundings(
                    weights, grids, unit_output, inputs, targets, options.iterations, options.batch, options.seed,
                    learning_mode=lambda: quantized.learning.straight_through(options.drop, options.seed), share=share,
                    step_sizes=list(scales.values()), step_size_lr=options.step_size_lr,
                    correction=weight_correction(quantized.config))
        finally:
            quantized.learning.scales = {}
        quantized.use_activation_scales(scales)
        for name, result in learned.items():
            use_weight_rounding(quantized, name, result.up)
        results.update(learned)
        errors = (next(iter(learned.values())).nearest_error, next(iter(learned.values())).learned_error)
        if hasattr(steps, "set_postfix"):
            steps.set_postfix(block="+".join(unit), nearest=f"{errors[0]:.3g}", learned=f"{errors[1]:.3g}")
    return results
