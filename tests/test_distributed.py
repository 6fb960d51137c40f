"""torchrun: batches split by rank, exact reductions, one mlflow run from rank 0."""
import json
import os
import subprocess
import sys

import mlflow
import pytest
import torch

from inference.distributed import ProcessInfo, process_info
from inference.errors import UserError

from conftest import REPO_ROOT


def test_shards_cover_every_batch_once_in_order():
    batches = [[index] for index in range(7)]
    shards = [ProcessInfo(rank, 3).shard(batches) for rank in range(3)]
    assert shards == [[[0], [3], [6]], [[1], [4]], [[2], [5]]]
    with pytest.raises(UserError, match="2 batches cannot be split over 3 processes; lower -b"):
        ProcessInfo(0, 3).shard(batches[:2])


def test_process_info_reads_torchrun_environment():
    assert process_info({}) == ProcessInfo(0, 1, 0)
    assert process_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == ProcessInfo(1, 2, 1)
    with pytest.raises(UserError, match="inconsistent"):
        process_info({"RANK": "2", "WORLD_SIZE": "2"})


def test_single_process_sum_and_merge_are_identities():
    values = torch.tensor([1.5, 2.0])
    assert ProcessInfo().sum(values) is values


def checksum(path):
    return torch.load(path, weights_only=True)["checksum"]


def store_uri(tmp_path) -> str:
    """The mlflow store both runs of ``single_and_torchrun`` log to."""
    return f"sqlite:///{tmp_path / 'store.db'}"


def single_and_torchrun(common: list[str], tmp_path, single: tuple[str, ...] = (), env: dict | None = None
                        ) -> dict[str, str]:
    """Run the CLI with ``common`` in one process (with ``single`` added) and under torchrun with two
    (statistics in ``tmp_path/<name>``, results in ``tmp_path/<name>.json``), in ``env`` added to
    this one's; each run's stdout."""
    uri = store_uri(tmp_path)
    outputs = {}
    for name, launcher in (("single", [sys.executable]),
                           ("torchrun", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc_per_node=2"])):
        extra = single if name == "single" else ()
        result = subprocess.run([*launcher, "inference/inference_sim.py", *common, *extra, "-sf", str(tmp_path / name),
                                 "--results-json", str(tmp_path / f"{name}.json"), "--mlflow-uri", uri, "-mlexp", name],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[name] = result.stdout
    return outputs


def test_torchrun_two_processes_equal_one_process(tmp_path):
    common = ["-a", "fmnist_resnet20", "-ss", "512", "-b", "64", "-p", "0", "-pcq_w", "-pcq_a", "--qtype", "int4",
              "-qw", "int4", "-c", "laplace", "-baa", "-baw", "-bcw", "-sm", "collect", "-cs", "256", "-me"]
    outputs = single_and_torchrun(common, tmp_path)
    single, parallel = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("single", "torchrun"))
    assert (parallel["processes"], single["processes"]) == (2, 1)
    assert (parallel["top1"], parallel["top5"], parallel["images"]) == (single["top1"], single["top5"], single["images"])
    assert abs(parallel["loss"] - single["loss"]) < 1e-9
    assert parallel["avg.entropy.act"] == single["avg.entropy.act"]
    assert parallel["avg.huffman.act"] == single["avg.huffman.act"]
    for granularity in ("per_channel", "per_tensor"):
        file = f"fmnist_resnet20.{granularity}.output.stats.pt"
        assert checksum(tmp_path / "torchrun" / file) == checksum(tmp_path / "single" / file)
    assert outputs["torchrun"].count(" * Prec@1") == 1
    mlflow.set_tracking_uri(store_uri(tmp_path))
    runs = mlflow.search_runs(experiment_names=["torchrun"])
    assert len(runs) == 1 and runs.loc[0, "metrics.processes"] == 2
    assert runs.loc[0, "metrics.top1"] == single["top1"]


def test_merging_shard_accumulators_equals_one_accumulator_of_all_batches():
    from pytorch_quantizer.model.observers import StatsAccumulator
    from pytorch_quantizer.maths.stats import compute_stats

    batches = [torch.relu(torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(seed))) for seed in range(5)]
    whole, even, odd = StatsAccumulator(), StatsAccumulator(), StatsAccumulator()
    for index, batch in enumerate(batches):
        stats = compute_stats(batch, axis=1)
        whole.update(stats)
        (even if index % 2 == 0 else odd).update(stats)
    even.merge(odd)
    assert even.batches == whole.batches == 5
    for kind in ("mean", "max"):
        merged, single = even.reduce(kind).as_dict(), whole.reduce(kind).as_dict()
        assert all(torch.allclose(merged[key], single[key], rtol=1e-6, atol=0) for key in single)


def learned_rounding(folder, method: str) -> dict:
    return torch.load(folder / f"fmnist_resnet20.output.{method}.pt", weights_only=True)


@pytest.mark.parametrize("method, flags", [
    ("block-rounding", ["--reconstruct", "block", "--qdrop", "0.5", "--learn-step-sizes"]),
    ("block-rounding", ["--reconstruct", "block", "--joint-blocks", "2"]),
    ("rounding", ["--adaround"]),
])
def test_torchrun_learns_the_rounding_of_one_process_with_the_same_groups_bit_for_bit(tmp_path, method, flags):
    """Two processes each compute the gradient of their group of calibration batches; one process
    with ``--recon-groups 2`` computes both groups' in turn: the same sums in the same order, so the
    same rounding (and learned step sizes), every weight, at one thread per process in both runs."""
    common = ["-a", "fmnist_resnet20", "-ss", "400", "-b", "40", "-p", "0", "--qtype", "int8", "-qw", "int4",
              "-pcq_w", "-sm", "collect", "-cs", "128", *flags, "--recon-iters", "40", "--recon-batch", "32"]
    single_and_torchrun(common, tmp_path, single=("--recon-groups", "2"), env={"OMP_NUM_THREADS": "1"})
    single, parallel = (learned_rounding(tmp_path / name, method) for name in ("single", "torchrun"))
    assert set(single["layers"]) == set(parallel["layers"]) and len(single["layers"]) == 22
    assert all(torch.equal(single["layers"][name], parallel["layers"][name]) for name in single["layers"])
    assert set(single["activation_scales"]) == set(parallel["activation_scales"])
    assert bool(single["activation_scales"]) == ("--learn-step-sizes" in flags)
    assert all(torch.equal(value, parallel["activation_scales"][name])
               for name, value in single["activation_scales"].items())
    results = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("single", "torchrun")]
    assert results[0]["top1"] == results[1]["top1"] and results[1]["processes"] == 2
