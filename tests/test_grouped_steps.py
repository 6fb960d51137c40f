"""Learning steps summed group by group (``methods.grouped_steps``, --recon-groups): the groups of the
calibration batches, the gradient of the whole batch, and two processes (threads here, torchrun in
test_distributed) learning exactly the rounding of one process with the same groups."""
import threading

import pytest
import torch

from pytorch_quantizer.api.processes import OneProcess, data_share
from pytorch_quantizer.errors import QuantizationError
from pytorch_quantizer.methods import adaround
from pytorch_quantizer.methods.grouped_steps import DataShare, batch_groups, grouped_gradients

from test_adaround import conv_case


def test_batch_k_is_in_group_k_mod_g():
    assert batch_groups([3, 2, 4, 1], 2).tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 1]
    assert batch_groups([2, 2], 1).tolist() == [0, 0, 0, 0]


def test_one_process_holds_every_image_in_its_batches_groups():
    share = data_share([3, 2, 4], OneProcess(), 2)
    assert share.positions.tolist() == list(range(9)) and share.total == 9 and share.group_count == 2
    assert share.groups.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]


class TwoProcesses:
    distributed, world_size, rank = True, 2, 0


def test_groups_that_do_not_divide_over_the_processes_are_refused():
    with pytest.raises(QuantizationError, match="rounding_groups 3 is not a multiple of the 2 processes") as error:
        data_share([4, 4], TwoProcesses(), 3)
    assert error.value.code == "rounding_groups"


def test_the_grouped_gradient_is_the_gradient_of_the_whole_batch():
    conv, weight, _, inputs, targets = conv_case()
    weight = weight.clone().requires_grad_(True)
    share = DataShare(torch.arange(64), 64, batch_groups([16] * 4, 3), 3, lambda values: values)
    chosen = torch.randint(64, (24,), generator=torch.Generator().manual_seed(1))

    def loss_of(images):
        return adaround.sample_loss_sum(adaround.layer_output(conv, weight, inputs[images]), targets[images])

    (grouped,), loss = grouped_gradients(loss_of, chosen, share, [weight])
    whole = loss_of(chosen)
    (expected,) = torch.autograd.grad(whole, [weight])
    assert loss == pytest.approx(float(whole.detach()), rel=1e-5)
    assert torch.allclose(grouped, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def summing_over_threads(count: int):
    """``sum`` functions for ``count`` threads standing for processes: each returns the sum of what
    every thread passed, in rank order."""
    barrier, slots = threading.Barrier(count), [None] * count

    def for_rank(rank):
        def summed(values):
            slots[rank] = values.clone()
            barrier.wait()
            total = slots[0].clone()
            for other in slots[1:]:
                total += other
            barrier.wait()
            return total
        return summed
    return [for_rank(rank) for rank in range(count)]


def test_two_processes_learn_the_rounding_of_one_process_with_the_same_groups_bit_for_bit():
    conv, weight, grid, inputs, targets = conv_case()
    sizes, groups = [32] * 8, batch_groups([32] * 8, 2)
    single = DataShare(torch.arange(256), 256, groups, 2, lambda values: values)
    expected = adaround.learn_rounding(conv, weight, grid, inputs, targets, 60, 32, share=single)
    results = [None, None]

    def learn(rank, summed):
        positions = torch.cat([torch.arange(32 * batch, 32 * batch + 32) for batch in range(rank, len(sizes), 2)])
        share = DataShare(positions, 256, groups, 2, summed)
        results[rank] = adaround.learn_rounding(conv, weight, grid, inputs[positions], targets[positions], 60, 32,
                                                share=share)

    threads = [threading.Thread(target=learn, args=(rank, summed))
               for rank, summed in enumerate(summing_over_threads(2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(result.up, expected.up) for result in results)
    assert all(result.losses == expected.losses for result in results)
    ungrouped = adaround.learn_rounding(conv, weight, grid, inputs, targets, 60, 32)
    assert float((ungrouped.up == expected.up).float().mean()) > 0.9
