"""A model run once on a batch with every intermediate value kept, then again with one layer's call
replaced, recomputing only what depends on that layer: the cost of a perturbation at a layer is the
part of the network after it, not a whole forward pass.

The model is traced with ``torch.fx`` (modules of ``torch.nn`` are leaves, so hooks on them still
run); the values of the nodes that do not depend on the replaced call are reused as they were. A
model that cannot be traced is run whole for every replacement, with a forward hook standing in for
the call (the same numbers, more time).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from pytorch_quantizer.model.graph import GEMM_LAYERS

Replacement = Callable[..., torch.Tensor]   # (module, *args) -> the output that stands in for the module's


class _Recording(fx.Interpreter):
    """Runs the graph keeping every node's value, with some module calls replaced."""

    def __init__(self, module: fx.GraphModule, replacements: dict[str, Replacement] | None = None):
        super().__init__(module, garbage_collect_values=False)
        self.replacements = replacements or {}

    def call_module(self, target, args, kwargs):
        replacement = self.replacements.get(target)
        if replacement is not None:
            return replacement(self.fetch_attr(target), *args, **kwargs)
        return super().call_module(target, args, kwargs)


class _LayerTracer(fx.Tracer):
    """Conv2d / Linear layers are leaves even when they are subclasses from outside ``torch.nn`` (as
    EfficientNet-Lite's same-padding convs are): their calls are what gets replaced, their hooks run."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, GEMM_LAYERS) or super().is_leaf_module(module, qualified_name)


def traced(model: nn.Module) -> fx.GraphModule | None:
    """``model`` as an fx graph sharing its modules, or None when it cannot be traced."""
    try:
        return fx.GraphModule(model, _LayerTracer().trace(model))
    except Exception:  # noqa: BLE001 - any tracing failure means: run the model whole instead
        return None


class CachedRun:
    """``CachedRun(model, graph, images)``: the model's output on ``images`` and every value on the
    way (``graph`` from ``traced``, or None to run whole); ``replaced(name, replacement)`` is the
    output with module ``name``'s call replaced."""

    def __init__(self, model: nn.Module, graph: fx.GraphModule | None, images: torch.Tensor):
        self.model, self.graph, self.images = model, graph, images
        with torch.no_grad():
            if graph is None:
                self.output = model(images)
                self.values = {}
            else:
                recording = _Recording(graph)
                self.output = recording.run(images)
                self.values = recording.env

    def replaced(self, name: str, replacement: Replacement) -> torch.Tensor:
        calls = [] if self.graph is None else [node for node in self.graph.graph.nodes
                                                    if node.op == "call_module" and node.target == name]
        with torch.no_grad():
            if not calls:   # not traced, or the layer is not called as a module of the graph
                return self._whole_run(name, replacement)
            affected = downstream(calls)
            kept = {node: value for node, value in self.values.items() if node not in affected}
            return _Recording(self.graph, {name: replacement}).run(self.images, initial_env=kept)


    def _whole_run(self, name: str, replacement: Replacement) -> torch.Tensor:
        """The whole model run with a forward hook returning the replacement's output (the replacement
        may call the module itself: the hook lets that inner call through)."""
        inside = []

        def hook(module, args, output):
            if inside:
                return None
            inside.append(True)
            try:
                return replacement(module, *args)
            finally:
                inside.clear()

        handle = self.model.get_submodule(name).register_forward_hook(hook)
        try:
            return self.model(self.images)
        finally:
            handle.remove()


def downstream(nodes: list[fx.Node]) -> set[fx.Node]:
    """``nodes`` and every node that uses their values, directly or not."""
    found, pending = set(), list(nodes)
    while pending:
        node = pending.pop()
        if node not in found:
            found.add(node)
            pending.extend(node.users)
    return found
