"""ONNX export of a calibrated ``QuantizedModel`` with QuantizeLinear / DequantizeLinear (QDQ) pairs
that carry exactly the simulator's grids, so an integer runtime computes what was simulated.

The BN-folded model is exported in float by the torch (TorchScript) exporter at opset 21, the first
with 4-bit tensor types; the onnx helper API then

- replaces each quantized weight initializer W by its integer codes q and DequantizeLinear(q, s, z)
  (axis 0 per output channel, or per tensor), so that DQ(q) = (q - z) s is the simulated weight;
- puts Q -> DQ with the layer's fixed activation grid where the simulator quantizes activations:
  on each Conv / Gemm output (``act_quant_point=output``), or on what each Conv / Gemm reads
  (``input``). The simulator quantizes the pre-activation of a fused ReLU / ReLU6 over a range from
  0 to at most 6 and the activation then runs on it: act(DQ(Q(x))) = DQ(Q(act(x))) there, so the
  pair goes after the activation, where runtimes fuse Conv -> Q into an integer kernel; before an
  equalized per-channel clamp it stays on the Conv output (after a copy of the clamp with the
  departure ``rectified_aciq``, which quantizes the activation's output).

The runtime's Q is clamp(round(x / s) + z, type range); the simulator's is clamp(round(x (1/s)) +
z, 0, qmax): the same wherever the type range is 0..qmax (uint8 at 8 bits, uint4 at 4 bits), and
the export is refused at other widths. Layers map to Conv / Gemm nodes in execution order (checked
against the weights' shapes).
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from pytorch_quantizer.quantizers.config import QuantConfig, WeightKind
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.model.graph import GEMM_LAYERS, ChannelClamp
from pytorch_quantizer.model.weights import weight_grid

OPSET = 21
CODE_TYPES = {4: "UINT4", 8: "UINT8"}   # bits -> ONNX element type whose range is exactly 0..2^bits - 1
GEMM_OPS = ("Conv", "Gemm")


@dataclass(frozen=True)
class Encoding:
    """One quantized tensor of the simulator: value = (q - zero_point) * scale, q in 0 .. 2^bits - 1."""

    layer: str
    tensor: str          # "weight", "bias" (int32_bias), "output" or "input"
    bits: int
    scale: list[float]
    zero_point: list[int]
    axis: int | None     # the channel axis of per-channel scales (weights: 0), None per tensor
    clipping: str
    storage: str         # the ONNX type holding q (uint8 / uint4), or q - z (int8 / int16, see ``weight_storage``)


def export_problem(config: QuantConfig, fixed_ranges: bool) -> QuantizationError | None:
    """Why ``config`` cannot be exported as integer QDQ (None when it can), as an error whose
    ``code`` names the problem (``detail``: the tensor concerned, where one is)."""
    def problem(code: str, message: str, field: str, detail: str | None = None) -> QuantizationError:
        return QuantizationError(f"export: {message}", code=code, field=field, detail=detail)

    if not config.enabled:
        return problem("export_nothing_quantized", "nothing is quantized: set activations and / or weights", "weights")
    if not fixed_ranges and config.activations is not None:
        return problem("export_per_batch_ranges", "activation ranges are measured on each evaluated batch, which a "
                       "runtime cannot do: quantize with calibration images (fixed ranges)", "calibration")
    if config.stochastic:
        return problem("export_stochastic", "stochastic rounding has no runtime form: set stochastic=False", "stochastic")
    if config.bias_correct_weights or config.variance_correct_weights:
        return problem("export_weight_correction", "weight bias / variance correction moves weights off their integer "
                       "grid: set bias_correct_weights / variance_correct_weights to False", "bias_correct_weights")
    if config.bias_correct_activations and not config.departures.bca_folded:
        return problem("export_online_bca", "the seed's online activation bias correction corrects each batch: turn "
                       "it off, or fold it into the biases with departures.bca_folded", "bias_correct_activations")
    for name, spec in (("activations", config.activations), ("weights", config.weights)):
        if spec is None:
            continue
        if spec.kind != WeightKind.INT:
            return problem("export_not_integer", f"{spec.kind.value} {name} are not an integer grid: set "
                           f"{name}.kind=WeightKind.INT at 8 or 4 bits", f"{name}.kind", f"{spec.kind.value} {name}")
        if spec.bit_allocation or spec.bin_allocation:
            return problem("export_allocation", f"bit / bin allocation gives {name} per-channel bit widths (or "
                           f"mid-tread grids): turn {name}.bit_allocation / bin_allocation off", f"{name}.bit_allocation",
                           name)
        if spec.bits not in CODE_TYPES:
            return problem("export_bits", f"{spec.bits}-bit {name} have no ONNX type of exactly that range: use 8 or 4 "
                           "bits", f"{name}.bits", f"{spec.bits}-bit {name}")
    if config.activations is not None and config.activations.per_channel:
        return problem("export_per_channel_activations", "per-channel activations have no runtime form (QuantizeLinear "
                       "of activations is per tensor): set activations.per_channel=False", "activations.per_channel")
    return None


def execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the Conv2d / Linear modules in the order one forward pass calls them."""
    order, handles = [], []
    for name, module in model.named_modules():
        if isinstance(module, GEMM_LAYERS):
            handles.append(module.register_forward_hook(lambda *_, name=name: order.append(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def float_graph(model: nn.Module, example: torch.Tensor):
    """The model (as it stands: simulated weights, folded BN) in float ONNX, batch axis dynamic."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notices
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def checked_codes(layer: str, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Integer codes q with (q - z) s = ``weight`` per output channel; QuantizationError where the weight is
    not on its grid."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    scale, zero_point = scale.float().reshape(shape), zero_point.float().reshape(shape)
    codes = torch.round(weight.float() / scale) + zero_point
    off_grid = ((codes - zero_point) * scale - weight.float()).abs().max()
    if off_grid > 1e-4 * float(scale.max()):
        raise QuantizationError(f"layer {layer}: its weights are not on their integer grid (off by {float(off_grid):.3g})")
    return codes


def weight_storage(codes: torch.Tensor, zero_point: torch.Tensor, qmax: torch.Tensor, bits: int
                   ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(stored codes, stored zero points, ONNX type) of a weight: its codes in uint{bits} where every
    zero point lies in 0..qmax; else q - z with zero point 0 in the narrowest signed type that holds
    them (the seed's grid of a channel whose weights all have one sign puts z outside 0..qmax)."""
    if float(zero_point.min()) >= 0 and float(zero_point.max()) <= float(qmax.max()):
        return codes, zero_point, CODE_TYPES[bits]
    shifted = codes - zero_point.float().reshape((-1,) + (1,) * (codes.dim() - 1))
    fits_int8 = float(shifted.min()) >= -128 and float(shifted.max()) <= 127
    return shifted, torch.zeros_like(zero_point), "INT8" if fits_int8 else "INT16"


def check_activation_zero_point(layer: str, zero_point: torch.Tensor, qmax: torch.Tensor) -> None:
    """QuantizeLinear clamps to its type's range, the simulator to 0..qmax around z: the same only
    where z lies in 0..qmax."""
    if not 0 <= float(zero_point) <= float(qmax):
        raise QuantizationError(f"layer {layer}: its activation zero point {float(zero_point):g} lies outside 0..{float(qmax):g} "
                          "(the seed's grid of a range that excludes 0), which QuantizeLinear cannot express: set "
                          "departures.range_within_data (grids within the data's range)",
                          code="export_zero_point_outside", detail=layer)


def tensor_proto(name: str, values: torch.Tensor, element_type: str, dims: list[int] | None = None):
    from onnx import TensorProto, helper

    values = values.detach().cpu()
    code = getattr(TensorProto, element_type)
    data = values.reshape(-1).tolist() if element_type != "FLOAT" else values.float().reshape(-1).tolist()
    return helper.make_tensor(name, code, list(values.shape) if dims is None else dims, data)


class QDQBuilder:
    """Edits one float ONNX graph: weight initializers to codes + DQ, Q -> DQ pairs on activations."""

    def __init__(self, proto):
        self.proto = proto
        self.graph = proto.graph
        self.initializers = {tensor.name: tensor for tensor in self.graph.initializer}
        self.before: dict[int, list] = {}   # node index -> nodes to run just before it
        self.after: dict[int, list] = {}    # node index -> nodes to run just after it
        self.leading: list = []

    def grid_tensors(self, prefix: str, scale: torch.Tensor, zero_point: torch.Tensor, element_type: str,
                     per_channel: bool) -> tuple[str, str]:
        shape = [scale.numel()] if per_channel else []
        self.graph.initializer.extend([
            tensor_proto(f"{prefix}_scale", scale.float().reshape(shape), "FLOAT", shape),
            tensor_proto(f"{prefix}_zero_point", zero_point.round().to(torch.int64).reshape(shape), element_type, shape)])
        return f"{prefix}_scale", f"{prefix}_zero_point"

    def quantize_weight(self, index: int, layer: str, codes: torch.Tensor, scale: torch.Tensor,
                        zero_point: torch.Tensor, element_type: str, per_channel: bool) -> None:
        from onnx import helper

        node = self.graph.node[index]
        prefix = f"{layer}.weight_quantized"
        self.graph.initializer.append(tensor_proto(f"{prefix}_codes", codes.to(torch.int64), element_type))
        scale_name, zero_name = self.grid_tensors(prefix, scale, zero_point, element_type, per_channel)
        attributes = {"axis": 0} if per_channel else {}
        self.leading.append(helper.make_node("DequantizeLinear", [f"{prefix}_codes", scale_name, zero_name],
                                             [f"{prefix}_dq"], name=f"{prefix}/DequantizeLinear", **attributes))
        old = node.input[1]
        node.input[1] = f"{prefix}_dq"
        if not any(old in other.input for other in self.graph.node):
            self.graph.initializer.remove(self.initializers[old])

    def quantize_bias(self, index: int, layer: str, bias: torch.Tensor, scale: torch.Tensor) -> None:
        """The node's bias as int32 codes round(b / (s_x s_w)) and DequantizeLinear(axis 0) at s_x s_w."""
        from onnx import helper

        node = self.graph.node[index]
        prefix = f"{layer}.bias_quantized"
        codes = torch.round(bias.float() / scale.float()).to(torch.int64)
        self.graph.initializer.append(tensor_proto(f"{prefix}_codes", codes, "INT32"))
        scale_name, zero_name = self.grid_tensors(prefix, scale, torch.zeros_like(scale), "INT32", True)
        self.leading.append(helper.make_node("DequantizeLinear", [f"{prefix}_codes", scale_name, zero_name],
                                             [f"{prefix}_dq"], name=f"{prefix}/DequantizeLinear", axis=0))
        old = node.input[2]
        node.input[2] = f"{prefix}_dq"
        if not any(old in other.input for other in self.graph.node):
            self.graph.initializer.remove(self.initializers[old])

    def qdq_nodes(self, prefix: str, source: str, target: str, scale: torch.Tensor, zero_point: torch.Tensor,
                  bits: int) -> list:
        from onnx import helper

        scale_name, zero_name = self.grid_tensors(prefix, scale, zero_point, CODE_TYPES[bits], False)
        return [helper.make_node("QuantizeLinear", [source, scale_name, zero_name], [f"{prefix}_q"],
                                 name=f"{prefix}/QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{prefix}_q", scale_name, zero_name], [target],
                                 name=f"{prefix}/DequantizeLinear")]

    def following_activation(self, index: int) -> int | None:
        """The index of the Relu / Clip node that alone reads the node's output, if there is one."""
        output = self.graph.node[index].output[0]
        readers = [position for position, node in enumerate(self.graph.node) if output in node.input]
        if len(readers) == 1 and self.graph.node[readers[0]].op_type in ("Relu", "Clip"):
            return readers[0]
        return None

    def quantize_output(self, index: int, layer: str, scale, zero_point, bits: int, activation: nn.Module | None) -> None:
        """Q -> DQ on the node's output (renamed, so its readers read the DQ), after ``activation`` when given."""
        node = self.graph.node[index]
        output = node.output[0]
        node.output[0] = f"{output}_float"
        source, nodes = node.output[0], []
        if activation is not None:
            nodes, source = activation_nodes(activation, source, f"{layer}.output_activation", self.graph)
        self.after[index] = [*nodes, *self.qdq_nodes(f"{layer}.output", source, output, scale, zero_point, bits)]

    def quantize_input(self, index: int, layer: str, scale, zero_point, bits: int) -> None:
        node = self.graph.node[index]
        target = f"{layer}.input_dq"
        self.before[index] = self.qdq_nodes(f"{layer}.input", node.input[0], target, scale, zero_point, bits)
        node.input[0] = target

    def finish(self):
        nodes = list(self.leading)
        for index, node in enumerate(self.graph.node):
            nodes += [*self.before.get(index, []), node, *self.after.get(index, [])]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        return self.proto


def activation_nodes(activation: nn.Module, source: str, prefix: str, graph) -> tuple[list, str]:
    """ONNX nodes computing ``activation`` (ReLU, ReLU6 or ChannelClamp) of ``source``; their output name."""
    from onnx import helper

    if isinstance(activation, nn.ReLU):
        return [helper.make_node("Relu", [source], [f"{prefix}_out"], name=f"{prefix}/Relu")], f"{prefix}_out"
    if isinstance(activation, nn.ReLU6):
        lower, upper = torch.tensor(0.0), torch.tensor(6.0)
    elif isinstance(activation, ChannelClamp):
        lower, upper = activation.lower.reshape(-1, 1, 1), activation.upper.reshape(-1, 1, 1)
    else:
        raise QuantizationError(f"{type(activation).__name__} before a quantized output has no export here")
    graph.initializer.extend([tensor_proto(f"{prefix}_lower", lower, "FLOAT"),
                              tensor_proto(f"{prefix}_upper", upper, "FLOAT")])
    return [helper.make_node("Max", [source, f"{prefix}_lower"], [f"{prefix}_floor"], name=f"{prefix}/Max"),
            helper.make_node("Min", [f"{prefix}_floor", f"{prefix}_upper"], [f"{prefix}_out"], name=f"{prefix}/Min")
            ], f"{prefix}_out"


def gemm_nodes(proto, order: list[str], model: nn.Module) -> dict[str, int]:
    """Layer name -> index of its Conv / Gemm node, matched in execution order and checked by weight shape."""
    indices = [index for index, node in enumerate(proto.graph.node) if node.op_type in GEMM_OPS]
    if len(indices) != len(order):
        raise QuantizationError(f"the exported graph has {len(indices)} Conv / Gemm nodes for {len(order)} Conv2d / Linear "
                          "calls (a module called twice, or a GEMM the exporter rewrote); this model cannot be exported")
    initializers = {tensor.name: list(tensor.dims) for tensor in proto.graph.initializer}
    for name, index in zip(order, indices):
        node = proto.graph.node[index]
        expected = list(model.get_submodule(name).weight.shape)
        if initializers.get(node.input[1]) != expected or (node.op_type == "Gemm" and not transposed_b(node)):
            raise QuantizationError(f"layer {name} does not match Conv / Gemm node {node.name} of the exported graph")
    return dict(zip(order, indices))


def transposed_b(node) -> bool:
    return any(attribute.name == "transB" and attribute.i == 1 for attribute in node.attribute)


def export_qdq(quantized, example: torch.Tensor):
    """(ONNX model, encodings) of a calibrated ``QuantizedModel`` (see the module docstring)."""
    problem = export_problem(quantized.config, quantized.activation_stats is not None)
    if problem is not None:
        raise problem
    model = quantized.model
    with quantized.bypassed():
        order = execution_order(model, example)
        proto = float_graph(model, example)
    if len(set(order)) != len(order):
        raise QuantizationError("a Conv2d / Linear module runs twice in one pass; such a model cannot be exported")
    nodes = gemm_nodes(proto, order, model)
    builder, encodings = QDQBuilder(proto), []
    for name in order:
        plan = quantized.plans[name]
        if plan.weight is not None:
            grid = weight_grid(quantized, name)
            weight = model.get_submodule(name).weight.detach()
            bits, per_channel = int(plan.weight.bits), plan.weight.per_channel
            codes, zero_point, element_type = weight_storage(
                checked_codes(name, weight, grid.scale, grid.zero_point), grid.zero_point, grid.qmax, bits)
            builder.quantize_weight(nodes[name], name, codes, grid.scale, zero_point, element_type, per_channel)
            if name in quantized.bias_scales:
                scale = quantized.bias_scales[name]
                builder.quantize_bias(nodes[name], name, model.get_submodule(name).bias.detach(), scale)
                encodings.append(Encoding(name, "bias", 32, scale.tolist(), [0] * scale.numel(), 0, "no", "int32"))
            encodings.append(Encoding(name, "weight", bits, grid.scale.float().reshape(-1).tolist(),
                                      grid.zero_point.round().int().reshape(-1).tolist(), 0 if per_channel else None,
                                      plan.weight.clipping, element_type.lower()))
        if plan.activation is None:
            continue
        activation_plan = quantized.activation_plan(name)
        bits = int(plan.activation.bits)
        check_activation_zero_point(name, activation_plan.zero_point, activation_plan.qmax)
        if quantized.at_output:
            index, fused = nodes[name], quantized.fused.module(name)
            movable = isinstance(fused, (nn.ReLU, nn.ReLU6)) and bits == 8   # integer kernels are 8-bit
            after = builder.following_activation(index) if movable else None
            if after is not None and float(activation_plan.zero_point) == 0:
                index, fused = after, None   # Q(act(x)) = act(DQ(Q(x))) on a grid from 0 to at most 6: runtimes fuse it
            elif not quantized.config.departures.rectified_aciq:
                fused = None
            builder.quantize_output(index, name, activation_plan.scale, activation_plan.zero_point, bits, fused)
        else:
            builder.quantize_input(nodes[name], name, activation_plan.scale, activation_plan.zero_point, bits)
        encodings.append(Encoding(name, "output" if quantized.at_output else "input", bits,
                                  [float(activation_plan.scale)], [int(round(float(activation_plan.zero_point)))],
                                  None, plan.activation.clipping, CODE_TYPES[bits].lower()))
    return builder.finish(), encodings


def save_export(proto, encodings: list[Encoding], path: Path) -> Path:
    """Write the model to ``path`` and the encodings to ``<path minus .onnx>.encodings.json``, each
    atomically; returns the encodings' path."""
    import onnx

    from pytorch_quantizer.formats.safe_io import write_atomically

    onnx.checker.check_model(proto)
    encodings_path = path.with_name(path.name.removesuffix(".onnx") + ".encodings.json")
    write_atomically(path, lambda temporary: onnx.save(proto, temporary))
    text = json.dumps({"opset": OPSET, "encodings": [asdict(encoding) for encoding in encodings]}, indent=1)
    write_atomically(encodings_path, lambda temporary: Path(temporary).write_text(text))
    return encodings_path

