"""Mixed precision: the integer program meets its budget and finds the brute-force optimum; budgets
no plan can meet are refused with both ends named."""
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.methods.mixed_precision import Budget, LayerCosts, options, solve, spent

CANDIDATES = (2, 4, 8)


def layer(name, params, elements, macs, weight_kl, activation_kl=None, kept=False):
    return LayerCosts(name, params, elements, macs, 8 if kept else 4, 8, not kept, activation_kl is not None and not kept,
                      {} if kept else weight_kl, activation_kl or {})


def brute_force(layers, budget, candidates):
    """The least summed KL over every combination of options that fits the budget."""
    best = None
    for combination in product(*(options(item, candidates, budget) for item in layers)):
        choices = {item.name: choice for item, choice in zip(layers, combination)}
        used = spent(layers, choices)
        fits = all(value is None or used[key] <= value + 1e-9 for key, value in (
            ("mean_weight_bits", budget.weight_bits), ("mean_activation_bits", budget.activation_bits),
            ("gbops", budget.gbops)))
        if fits:
            cost = sum(item.weight_kl.get(choice[0], 0.0) + item.activation_kl.get(choice[1], 0.0)
                       for item, choice in zip(layers, combination) if item.free_weights or item.free_activations)
            best = cost if best is None else min(best, cost)
    return best


kl_tables = st.fixed_dictionaries({bits: st.floats(0, 5) for bits in CANDIDATES}).map(
    lambda table: {bits: table[bits] for bits in sorted(table)})


@settings(max_examples=60, deadline=None)
@given(weight_kls=st.lists(kl_tables, min_size=2, max_size=4), activation_kls=st.lists(kl_tables, min_size=4, max_size=4),
       sizes=st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 1000), st.integers(1, 10**6)), min_size=4, max_size=4),
       kind=st.sampled_from(["weights", "activations", "gbops", "both"]), fraction=st.floats(0.0, 1.0))
def test_the_integer_program_meets_the_budget_and_matches_brute_force(weight_kls, activation_kls, sizes, kind, fraction):
    layers = [layer(f"l{index}", *sizes[index], weight_kl, activation_kls[index]) for index, weight_kl in enumerate(weight_kls)]
    layers.append(layer("kept", 50, 50, 1000, {}, kept=True))
    low = {"weights": ("weight_bits", "mean_weight_bits"), "activations": ("activation_bits", "mean_activation_bits"),
           "gbops": ("gbops", "gbops"), "both": ("weight_bits", "mean_weight_bits")}[kind]
    probe = Budget(**{low[0]: 1.0}) if kind != "both" else Budget(weight_bits=1.0, activation_bits=1.0)
    cheapest = spent(layers, {item.name: min(options(item, CANDIDATES, probe)) for item in layers})
    dearest = spent(layers, {item.name: max(options(item, CANDIDATES, probe)) for item in layers})
    value = cheapest[low[1]] + fraction * (dearest[low[1]] - cheapest[low[1]])
    budget = Budget(**{low[0]: value}) if kind != "both" else Budget(weight_bits=value, activation_bits=value)
    try:
        plan = solve(layers, budget, CANDIDATES)
    except QuantizationError as error:   # "both": the activation end of a weight-bits value may not fit
        assert kind == "both" and error.code in ("budget_too_small", "budget_too_large", "budget_infeasible")
        return
    assert plan.spent[low[1]] <= value + 1e-6
    assert plan.objective == pytest.approx(brute_force(layers, budget, CANDIDATES), abs=1e-6)
    assert ("kept", None, None) not in plan.layer_bits and all(name != "kept" for name, _, _ in plan.layer_bits)


def test_the_kept_layers_count_in_the_budget_actually_spent():
    layers = [layer("small", 10, 10, 100, {2: 3.0, 4: 1.0, 8: 0.0}), layer("big", 90, 10, 100, {2: 0.1, 4: 0.0, 8: 0.0}),
              layer("kept", 100, 10, 100, {}, kept=True)]
    plan = solve(layers, Budget(weight_bits=5.1), CANDIDATES)
    # the kept layer's 800 bit-weights leave 220 of the 1020 the budget allows: "small" cannot take 8 bits
    assert dict((name, bits) for name, bits, _ in plan.layer_bits) == {"small": 4, "big": 2}
    assert plan.spent["mean_weight_bits"] == pytest.approx((4 * 10 + 2 * 90 + 8 * 100) / 200) == 5.1


@pytest.mark.parametrize("budget, message", [
    (Budget(weight_bits=1.5), "below the least any plan spends"),
    (Budget(weight_bits=8.5), "above the most any plan can spend"),
])
def test_budgets_no_plan_can_meet_are_refused(budget, message):
    layers = [layer("a", 10, 10, 100, {2: 1.0, 4: 0.5, 8: 0.0}), layer("kept", 10, 10, 100, {}, kept=True)]
    with pytest.raises(QuantizationError, match=message):
        solve(layers, budget, CANDIDATES)
