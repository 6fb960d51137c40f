"""Mixed reconstruction granularity (``--joint-blocks``): which blocks are joined, that a joined
unit is learned as one on the inputs the model gives it, and the flag's checks and file round trip."""
from __future__ import annotations

import pytest
import torch

from pytorch_quantizer.methods.joint_blocks import joint_units, relative_output_errors

ORDER = ["stem", "b1", "b2", "b3", "b4", "head"]
ERRORS = {"b1": 0.10, "b2": 0.40, "b3": 0.45, "b4": 0.20}


def test_the_pairs_whose_error_rises_most_are_joined():
    joinable = {"b2", "b3", "b4"}
    assert joint_units(ORDER, ERRORS, joinable, 1) == [["stem"], ["b1", "b2"], ["b3"], ["b4"], ["head"]]
    # b2 -> b3 rises by 0.05, b3 -> b4 falls: a second join takes the small rise, chaining three blocks
    assert joint_units(ORDER, ERRORS, joinable, 2) == [["stem"], ["b1", "b2", "b3"], ["b4"], ["head"]]
    # falls are never joined, however many are asked for; no pair without a measured error either
    assert joint_units(ORDER, ERRORS, joinable, 10) == [["stem"], ["b1", "b2", "b3"], ["b4"], ["head"]]


def test_only_joinable_blocks_join_and_none_means_every_block_alone():
    assert joint_units(ORDER, ERRORS, {"b3", "b4"}, 1) == [["stem"], ["b1"], ["b2", "b3"], ["b4"], ["head"]]
    assert joint_units(ORDER, ERRORS, set(), 3) == [[name] for name in ORDER]
    assert joint_units(ORDER, ERRORS, {"b2", "b3"}, 0) == [[name] for name in ORDER]
    assert joint_units([], {}, set(), 2) == []


def test_equal_rises_join_the_earlier_pair():
    errors = {"b1": 0.25, "b2": 0.5, "b3": 0.75, "b4": 1.0}
    assert joint_units(ORDER, errors, {"b2", "b3", "b4"}, 1) == [["stem"], ["b1", "b2"], ["b3"], ["b4"], ["head"]]


def test_relative_output_errors_are_zero_for_the_same_model_and_the_relative_squared_error_otherwise():
    from contextlib import nullcontext, contextmanager

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 3))
    images = torch.randn(10, 4)
    errors = relative_output_errors(model, images, ["0", "1"], 3, nullcontext, nullcontext)
    assert errors == {"0": 0.0, "1": 0.0}

    @contextmanager
    def halved():
        saved = model[0].weight.detach().clone()
        with torch.no_grad():
            model[0].weight.mul_(0.5)
        try:
            yield
        finally:
            with torch.no_grad():
                model[0].weight.copy_(saved)

    with torch.no_grad():
        first, second = model[0](images), model[1](model[0](images))
        changed_first = torch.nn.functional.linear(images, model[0].weight * 0.5, model[0].bias)
        changed_second = model[1](changed_first)
    errors = relative_output_errors(model, images, ["0", "1"], 3, nullcontext, halved)
    expected_first = float((changed_first - first).double().square().sum() / first.double().square().sum())
    expected_second = float((changed_second - second).double().square().sum() / second.double().square().sum())
    assert errors["0"] == pytest.approx(expected_first, rel=1e-6)
    assert errors["1"] == pytest.approx(expected_second, rel=1e-6)


def test_joined_blocks_learn_the_same_rounding_with_and_without_chained_inputs():
    """Without chaining each unit's inputs come from running the model up to its first block, so
    this checks what a joined unit passes on to the next block."""
    from test_adaround import assert_same_rounding_with_and_without_chaining
    from pytorch_quantizer.methods.reconstruction import RoundingOptions, learn_block_rounding

    assert_same_rounding_with_and_without_chaining(learn_block_rounding, "output", RoundingOptions(3, 8, 0, 0.5,
                                                                                                   joint_blocks=3))


def test_a_joined_unit_is_learned_as_one():
    from test_adaround import a4w4_mobilenet
    from pytorch_quantizer.methods.reconstruction import (RoundingOptions, blocks_in_order, learn_block_rounding,
                                                          learning_units)

    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with a4w4_mobilenet("output", images) as quantized:
        blocks, order = blocks_in_order(quantized, images)
        options = RoundingOptions(2, 8, 0, joint_blocks=3)
        units = learning_units(quantized, images, blocks, order, options)
        assert [block for unit in units for block in unit] == order
        assert len(units) == len(order) - 3 and all(len(unit) > 1 or unit[0] in order for unit in units)
        results = learn_block_rounding(quantized, images, options)
    # the layers of a unit share one learning (one list of losses), each unit its own
    learnings = {id(result.losses) for result in results.values()}
    assert len(learnings) == len(units)
    for unit in units:
        assert len({id(results[name].losses) for block in unit for name in blocks[block]}) == 1


def test_joint_blocks_learn_save_and_reload(run_cli, tmp_path):
    from test_adaround import learned_then_reused

    common = ["-a", "fmnist_mobilenet", "--qtype", "int4", "-qw", "int4", "-b", "100", "--subset", "100",
              "--reconstruct", "block", "--joint-blocks", "2", "-sf", tmp_path]
    first = learned_then_reused(run_cli, common, tmp_path, "-cs", "32", "--recon-iters", "5")
    assert (first["rounding_layers"], first["rounding_units"]) == (26, 11 - 2)   # two pairs of the 11 blocks joined
    # a file learned with other joined blocks belongs to another recipe
    code, _, err = run_cli(*common[:-3], "--joint-blocks", "1", "-sf", tmp_path, "-sm", "use")
    assert code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--qtype", "int4", "--joint-blocks", "2"], "--joint-blocks joins blocks of block reconstruction: add "
                                                 "--reconstruct block"),
    (["--qtype", "int4", "--reconstruct", "block", "--joint-blocks", "0"], "argument --joint-blocks"),
])
def test_joint_blocks_refusals_exit_2_with_one_line(run_cli, argv, message):
    code, _, err = run_cli("-a", "fmnist_mobilenet", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_methods_refuse_joint_blocks_without_block_rounding():
    from pytorch_quantizer import Methods
    from pytorch_quantizer.errors import QuantizationError

    with pytest.raises(QuantizationError, match="Methods.joint_blocks joins blocks of block reconstruction"):
        Methods(rounding="adaround", joint_blocks=2)
    with pytest.raises(QuantizationError, match="must be a non-negative integer"):
        Methods(rounding="block", joint_blocks=-1)
