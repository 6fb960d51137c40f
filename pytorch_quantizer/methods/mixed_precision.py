"""Mixed precision under a budget: each layer's bit widths chosen from candidates to minimise the
summed measured sensitivity (``sensitivity``), as an exact integer program (``scipy.optimize.milp``).

For every free layer l and option o = (w, a) of weight and activation bits (a tensor the budget
does not concern keeps the recipe's bits), a binary x_lo:

    minimise    sum_lo x_lo (KL_weights(l, w) + KL_activations(l, a))
    subject to  sum_o x_lo = 1                                         for every free layer l
                sum_lo x_lo w P_l + fixed_w  <=  B_w sum_l P_l          (mean weight bits, by weight count)
                sum_lo x_lo a E_l + fixed_a  <=  B_a sum_l E_l          (mean activation bits, by elements)
                sum_lo x_lo w a M_l + fixed  <=  B_ops                  (bit operations per image)

P_l, E_l, M_l: the layer's weights, activation elements and multiply-accumulates per image; layers
kept at 8 bits (and pinned ones) are fixed and counted in the sums. Bit allocation between the
channels of a layer then works at the layer's chosen bits, as the seed allocates at the recipe's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np

from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.model.report import FLOAT_BITS

DEFAULT_CANDIDATES = (2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class Budget:
    """What a plan may spend: mean weight bits (weighted by weight count), mean activation bits
    (weighted by elements), and / or giga bit-operations per image (multiply-accumulates x weight
    bits x activation bits). At least one."""

    weight_bits: float | None = None
    activation_bits: float | None = None
    gbops: float | None = None

    def __post_init__(self):
        given = [value for value in (self.weight_bits, self.activation_bits, self.gbops) if value is not None]
        if not given:
            raise QuantizationError("a Budget needs weight_bits, activation_bits and / or gbops", field="budget")
        if any(not value > 0 for value in given):
            raise QuantizationError("budget values must be positive", field="budget")


@dataclass(frozen=True)
class LayerCosts:
    """One layer: its sizes, the bits it has when not chosen (the recipe's, or 8 where kept),
    whether its weights / activations may be chosen, and the measured KL at each candidate."""

    name: str
    params: int
    elements: int
    macs: int
    weight_bits: int | None
    activation_bits: int | None
    free_weights: bool
    free_activations: bool
    weight_kl: dict[int, float] = field(default_factory=dict)
    activation_kl: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MixedPrecisionPlan:
    """``layer_bits``: (layer, weight bits or None, activation bits or None) as ``QuantConfig.layer_bits``
    takes it; ``spent``: the budget it spends, every quantized layer counted (mean weight bits, mean
    activation bits, giga bit-operations per image); ``objective``: its summed KL."""

    layer_bits: tuple[tuple[str, int | None, int | None], ...]
    spent: dict[str, float]
    objective: float

    def config(self, config):
        """``config`` with this plan's per-layer bits."""
        return replace(config, layer_bits=self.layer_bits)


def options(layer: LayerCosts, candidates: tuple[int, ...], budget: Budget) -> list[tuple[int | None, int | None]]:
    weights = candidates if layer.free_weights and (budget.weight_bits or budget.gbops) else (layer.weight_bits,)
    activations = (candidates if layer.free_activations and (budget.activation_bits or budget.gbops)
                   else (layer.activation_bits,))
    return list(product(weights, activations))


def usage(layer: LayerCosts, weight_bits: int | None, activation_bits: int | None) -> np.ndarray:
    """(weight bits x weights, activation bits x elements, bit operations) of one layer's choice."""
    w = weight_bits if weight_bits is not None else FLOAT_BITS
    a = activation_bits if activation_bits is not None else FLOAT_BITS
    return np.array([w * layer.params if weight_bits is not None else 0.0,
                     a * layer.elements if activation_bits is not None else 0.0, w * a * layer.macs / 1e9])


def spent(layers: list[LayerCosts], choices: dict[str, tuple[int | None, int | None]]) -> dict[str, float]:
    totals = sum(usage(layer, *choices[layer.name]) for layer in layers)
    weights = sum(layer.params for layer in layers if choices[layer.name][0] is not None)
    elements = sum(layer.elements for layer in layers if choices[layer.name][1] is not None)
    return {"mean_weight_bits": float(totals[0] / weights) if weights else float("nan"),
            "mean_activation_bits": float(totals[1] / elements) if elements else float("nan"),
            "gbops": float(totals[2])}


def check_budget(layers: list[LayerCosts], candidates: tuple[int, ...], budget: Budget) -> None:
    """A budget below the least any plan spends, or above the most, is refused with both ends."""
    def extreme(pick):
        return spent(layers, {layer.name: pick(options(layer, candidates, budget)) for layer in layers})

    cheapest = extreme(lambda found: min(found, key=lambda o: ((o[0] or 0), (o[1] or 0))))
    dearest = extreme(lambda found: max(found, key=lambda o: ((o[0] or 0), (o[1] or 0))))
    for field_name, key, value, unit in (("weight_bits", "mean_weight_bits", budget.weight_bits, "mean weight bits"),
                                         ("activation_bits", "mean_activation_bits", budget.activation_bits,
                                          "mean activation bits"), ("gbops", "gbops", budget.gbops, "GBOPs")):
        if value is None:
            continue
        low, high = cheapest[key], dearest[key]
        if value < low - 1e-9:
            raise QuantizationError(f"budget {field_name} {value:g} is below the least any plan spends, {low:.4g} "
                                    f"{unit} (every free layer at {min(candidates)} bits, kept layers at theirs)",
                                    code="budget_too_small", field=field_name, detail=f"{low:.4g}")
        if value > high + 1e-9:
            raise QuantizationError(f"budget {field_name} {value:g} is above the most any plan can spend, {high:.4g} "
                                    f"{unit} (every free layer at the largest candidate, {max(candidates)} bits)",
                                    code="budget_too_large", field=field_name, detail=f"{high:.4g}")


def solve(layers: list[LayerCosts], budget: Budget, candidates: tuple[int, ...] = DEFAULT_CANDIDATES
          ) -> MixedPrecisionPlan:
    """The plan that minimises the summed KL within ``budget`` (an exact MILP)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    candidates = tuple(sorted(set(candidates)))
    check_budget(layers, candidates, budget)
    variables = [(layer, choice) for layer in layers for choice in options(layer, candidates, budget)]
    cost = np.array([layer.weight_kl.get(w, 0.0) if layer.free_weights and w is not None else 0.0
                     for layer, (w, a) in variables]) + np.array(
        [layer.activation_kl.get(a, 0.0) if layer.free_activations and a is not None else 0.0
         for layer, (w, a) in variables])
    one_each = np.array([[1.0 if layer is chosen else 0.0 for layer, _ in variables] for chosen in layers])
    constraints = [LinearConstraint(one_each, 1, 1)]
    uses = np.array([usage(layer, *choice) for layer, choice in variables]).T
    totals = {"weight_bits": sum(layer.params for layer in layers if layer.weight_bits is not None or layer.free_weights),
              "activation_bits": sum(layer.elements for layer in layers
                                     if layer.activation_bits is not None or layer.free_activations)}
    for row, (name, value) in enumerate((("weight_bits", budget.weight_bits),
                                         ("activation_bits", budget.activation_bits), ("gbops", budget.gbops))):
        if value is not None:   # each row in units of its limit, so that the solver's tolerances are relative
            limit = value * totals[name] if name != "gbops" else value
            constraints.append(LinearConstraint(uses[row][None, :] / limit, -np.inf, 1.0))
    result = milp(cost, constraints=constraints, integrality=np.ones(len(variables)), bounds=Bounds(0, 1),
                  options={"mip_rel_gap": 0.0})
    if result.x is None:
        raise QuantizationError(f"no plan fits the budget ({result.message})", code="budget_infeasible")
    choices = {layer.name: choice for (layer, choice), taken in zip(variables, result.x) if taken > 0.5}
    layer_bits = tuple((layer.name, choices[layer.name][0] if layer.free_weights else None,
                        choices[layer.name][1] if layer.free_activations else None) for layer in layers
                       if layer.free_weights or layer.free_activations)
    return MixedPrecisionPlan(layer_bits, spent(layers, choices), float(result.fun))


def layer_costs(rows, recipe_bits: dict[str, tuple[bool, int | None, int | None]],
                pinned: dict[str, int] | None = None) -> list[LayerCosts]:
    """The LayerCosts of the layers measured in ``rows`` (``sensitivity.SensitivityRow``), in execution
    order; ``recipe_bits``: {layer: (kept at 8 bits, weight bits, activation bits)} of the recipe.
    Kept layers and ``pinned`` ones ({layer: weight bits}) are fixed."""
    pinned = pinned or {}
    unknown = sorted(set(pinned) - set(recipe_bits))
    if unknown:
        raise QuantizationError(f"pinned layer {unknown[0]} is not a measured Conv2d / Linear layer of the model",
                                code="layer_bits_unknown_layer", field="pinned", detail=unknown[0])
    by_layer: dict[str, dict] = {}
    for row in rows:
        entry = by_layer.setdefault(row.layer, {"sizes": (row.params, row.elements, row.macs), "weights": {},
                                                "activations": {}, "order": row.order})
        if row.kind in ("weights", "activations"):
            entry[row.kind][row.bits] = row.kl
    layers = []
    for name, entry in sorted(by_layer.items(), key=lambda item: item[1]["order"]):
        kept, weight_bits, activation_bits = recipe_bits[name]
        layers.append(LayerCosts(name, *entry["sizes"], pinned.get(name, weight_bits), activation_bits,
                                 not kept and bool(entry["weights"]) and name not in pinned,
                                 not kept and bool(entry["activations"]), entry["weights"], entry["activations"]))
    return layers
