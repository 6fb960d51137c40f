"""Quantization through inference_sim: real-model accuracy, backend switch, statistics files, flag errors."""
import json

import pytest

W4A4_FULL = ["-pcq_w", "-pcq_a", "--qtype", "int4", "-qw", "int4", "-c", "laplace", "-baa", "-baw", "-bcw"]


def run_json(run_cli, tmp_path, *argv):
    out = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
    code, stdout, stderr = run_cli(*argv, "-p", "0", "--results-json", out)
    assert code == 0, stderr
    return json.loads(out.read_text()), stdout


@pytest.mark.parametrize("arch", ["fmnist_resnet20", "fmnist_mobilenet"])
def test_w8a8_per_channel_laplace_is_within_0_3_points_of_fp32(run_cli, tmp_path, arch):
    fp32, _ = run_json(run_cli, tmp_path, "-a", arch, "-b", "1000")
    w8a8, _ = run_json(run_cli, tmp_path, "-a", arch, "-b", "1000", "-pcq_w", "-pcq_a", "--qtype", "int8",
                       "-qw", "int8", "-c", "laplace")
    assert fp32["images"] == w8a8["images"] == 10_000
    assert abs(fp32["top1"] - w8a8["top1"]) <= 0.3


def test_backends_give_the_same_accuracy_to_the_last_digit(run_cli, tmp_path):
    common = ["-a", "fmnist_resnet20", "-b", "500", "-ss", "1000", *W4A4_FULL]
    reference, _ = run_json(run_cli, tmp_path, *common, "--backend", "reference")
    kernels, _ = run_json(run_cli, tmp_path, *common, "--backend", "kernels")
    assert (reference["backend"], kernels["backend"]) == ("reference", "kernels")
    assert reference["top1"] == kernels["top1"] and reference["loss"] == kernels["loss"]


def test_q_off_equals_fp32_through_the_quantization_pipeline(run_cli, tmp_path):
    fp32, _ = run_json(run_cli, tmp_path, "-a", "fmnist_mobilenet", "-ss", "500")
    off, _ = run_json(run_cli, tmp_path, "-a", "fmnist_mobilenet", "-ss", "500", "--qtype", "int4", "--q_off")
    assert off["quantization"] == "fp32" and off["top1"] == fp32["top1"]


def test_collect_then_use_statistics_file(run_cli, tmp_path):
    common = ["-a", "fmnist_resnet20", "-b", "250", "-ss", "500", "-sf", tmp_path / "stats", *W4A4_FULL]
    collected, _ = run_json(run_cli, tmp_path, *common, "-sm", "collect", "-cs", "500")
    path = tmp_path / "stats" / "fmnist_resnet20.per_channel.output.stats.pt"
    assert collected["statistics_file"] == str(path) and path.is_file()
    assert not collected["calibration_overlaps_eval"] and "train split" in collected["calibration"]
    used, stdout = run_json(run_cli, tmp_path, *common, "-sm", "use")
    assert used["statistics_file"] == str(path) and "(500 images)" in used["statistics"]
    assert used["top1"] == collected["top1"] and used["loss"] == collected["loss"]
    calibrated, _ = run_json(run_cli, tmp_path, *common, "-ac", "-cs", "500")
    assert calibrated["top1"] == collected["top1"]


def test_entropy_line_and_kmeans_and_bin_allocation(run_cli, tmp_path):
    result, stdout = run_json(run_cli, tmp_path, "-a", "fmnist_resnet20", "-ss", "300", *W4A4_FULL,
                              "-bata", "5.3", "-batw", "5.3", "-mtq", "-me")
    line = next(line for line in stdout.splitlines() if line.startswith("Average bit rate: avg.entropy.act - "))
    assert abs(float(line.split(" - ")[1].split()[0]) - result["avg.entropy.act"]) < 1e-4
    assert 0 < result["avg.entropy.act"] < 8 and result["avg.huffman.act"] >= result["avg.entropy.act"]
    kmeans, _ = run_json(run_cli, tmp_path, "-a", "fmnist_resnet20", "-ss", "300", "-qw", "kmeans4", "-pcq_w")
    assert kmeans["quantization"]["weights"]["kind"] == "kmeans" and kmeans["top1"] > 80


@pytest.mark.parametrize("argv, message", [
    (["--qtype", "int0"], "int takes 1..16 bits for activations"),
    (["--qtype", "int33"], "int takes 1..16 bits for activations"),
    (["--qtype", "float4"], "quantization type 'float4': use one of intN, uniformN"),
    (["--qtype", "int4", "-c", "2xstd"], "unknown clipping method '2xstd'"),
    (["--qtype", "int4", "-pcq_a", "-c", "2std", "-baa"], "use -c no, laplace or gaus (not 2std)"),
    (["--qtype", "int4", "-pcq_a", "-c", "kld", "-baa"], "use -c no, laplace or gaus (not kld)"),
    (["-qw", "int4", "-pcq_w", "--weight-clipping", "mse", "-baw"], "use -c no, laplace or gaus (not mse)"),
    (["-qw", "int4", "--weight-clipping", "2xstd"], "unknown clipping method '2xstd'"),
    (["--qtype", "int4", "-bca"], "-bca (the seed's online correction) needs offline statistics"),
    (["--qtype", "int4", "-bca", "-sm", "collect", "--act-quant-point", "input"],
     "-bca (the seed's online correction) corrects Conv outputs"),
    (["--qtype", "int4", "-pcq_a", "-baa", "-mtq"], "-mtq (bin allocation) needs a fractional target"),
    (["--qtype", "int4", "-pcq_a", "-bata", "5.3"], "-bata sets the target of activation bit allocation: add -baa"),
    (["--qtype", "int4", "-bata", "-1"], "must be a positive number"),
    (["--qtype", "int4", "-cs", "0"], "must be a positive integer, got 0"),
    (["--qtype", "int4", "-sm", "use", "-sf", "/nonexistent"], "-sm use: no statistics file"),
    (["-sm", "collect"], "-sm collect concerns activation statistics: add --qtype intN"),
    (["-qw", "kmeans4", "-baw"], "-baw needs integer weights"),
    (["--qtype", "int4", "-kld", "-c", "laplace"], "-kld means -c kld and contradicts -c laplace"),
    (["--qtype", "int4", "-sba", "-sm", "use"], "-sba sets how statistics are collected: add -sm collect or -ac"),
    (["--qtype", "int4", "-sba"], "-sba sets how statistics are collected: add -sm collect or -ac"),
    (["-mf", "/tmp"], "-mf names the folder of -ms: add -ms"),
    (["-dd", "/etc/passwd"], "-dd /etc/passwd: is a file, not a folder"),
    (["-ms", "-mf", "/etc/passwd"], "-mf /etc/passwd: is a file, not a folder"),
    (["-ep", "--qtype", "int4"], "-ep sets --qtype and -qw itself"),
    (["-ep", "-sm", "collect"], "-ep with -sm: a statistics file holds one precision's ranges"),
    (["-ep", "--compare-fp32"], "-ep already evaluates FP32"),
    (["-ep", "-dd", "/tmp"], "-ep runs six precisions and -dd describes one run"),
    (["-ep", "-ms"], "-ep runs six precisions and -ms describes one run"),
    (["-ep", "-pcq_a", "-baa", "-c", "pct"], "use -c no, laplace or gaus (not pct)"),
    (["--device_ids", "0"], "--device_ids: CUDA is not available on this machine"),
    (["--device_ids", "0", "--device", "cpu"], "--device_ids selects CUDA devices and contradicts --device cpu"),
])
def test_bad_flags_exit_2_with_one_line_and_no_mlflow_run(run_cli, tmp_path, argv, message):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", *argv, "--mlflow-uri", uri, "-mlexp", "bad")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr and "Prec@1" not in stdout
    mlflow.set_tracking_uri(uri)
    assert mlflow.get_experiment_by_name("bad") is None


def test_report_csv_and_compare_fp32(run_cli, tmp_path):
    import pandas as pd

    report = tmp_path / "layers.csv"
    result, stdout = run_json(run_cli, tmp_path, "-a", "fmnist_resnet20", "-ss", "300", *W4A4_FULL,
                              "--report-csv", report, "--compare-fp32")
    table = pd.read_csv(report)
    assert set(table.tensor) == {"weight", "activation"} and len(table) == 2 * 22
    assert (table.sqnr_db > 0).all() and (table.mse > 0).all()
    assert table.loc[(table.layer == "conv1") & (table.tensor == "weight"), "bits"].item() == 8
    fp32, _ = run_json(run_cli, tmp_path, "-a", "fmnist_resnet20", "-ss", "300")
    assert result["fp32_top1"] == fp32["top1"] and result["drop"] == fp32["top1"] - result["top1"]
    assert "FP32 on the same images: Prec@1" in stdout
    code, _, stderr = run_cli("-a", "fmnist_resnet20", "--report-csv", report)
    assert code == 2 and "--report-csv concerns a quantized model" in stderr
