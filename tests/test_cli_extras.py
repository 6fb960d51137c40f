"""The rest of the seed's flags: -ep sweep, -ms/-mf, -dd, -sba, -kld, --device_ids, refused seed flags,
and every acceptance command of the CLI read back from mlflow."""
import json

import mlflow
import pandas as pd
import pytest
import torch

from inference.seed_compat import REJECTED_SEED_FLAGS

W4A4 = ["--qtype", "int4", "-qw", "int4"]
FULL = ["-pcq_w", "-pcq_a", "-sh", *W4A4, "-c", "laplace", "-baa", "-baw", "-bcw"]


def run_json(run_cli, tmp_path, *argv):
    out = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", "-p", "0", *argv, "--results-json", out)
    assert code == 0, stderr
    return json.loads(out.read_text()), stdout


def printed_accuracy(stdout):
    line = next(line for line in stdout.splitlines() if line.startswith(" * Prec@1"))
    return float(line.split()[2]), float(line.split()[4])


@pytest.mark.parametrize("flag", [names[0] for names in REJECTED_SEED_FLAGS] + ["--qmodel"])
def test_seed_flags_without_meaning_are_refused_with_the_reason(run_cli, flag):
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", flag, "4")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    explanation = next(text for names, text in REJECTED_SEED_FLAGS.items() if flag in names)
    assert f"{flag}: {explanation}" in stderr and "Prec@1" not in stdout


def test_kld_is_the_seed_name_of_c_kld_and_sba_averages_image_ranges(run_cli, tmp_path):
    common = ["-ss", "200", "-b", "100", *W4A4, "-ac", "-cs", "200"]
    alias, _ = run_json(run_cli, tmp_path, *common, "-kld")
    explicit, _ = run_json(run_cli, tmp_path, *common, "-c", "kld")
    assert alias["quantization"]["activations"]["clipping"] == "kld"
    assert (alias["top1"], alias["loss"]) == (explicit["top1"], explicit["loss"])
    per_tensor = ["-ss", "200", "-b", "100", "--qtype", "int4", "-qw", "int4", "-ac", "-cs", "200"]
    averaged, _ = run_json(run_cli, tmp_path, *per_tensor, "-sba")
    batch, _ = run_json(run_cli, tmp_path, *per_tensor)
    extremes, _ = run_json(run_cli, tmp_path, *per_tensor, "-sk", "max")
    assert len({averaged["loss"], batch["loss"], extremes["loss"]}) == 3
    # with one image per calibration batch, each image's range is the batch's
    single = ["-ss", "200", "-b", "1", "--qtype", "int4", "-qw", "int4", "-ac", "-cs", "8"]
    assert run_json(run_cli, tmp_path, *single, "-sba")[0]["loss"] == run_json(run_cli, tmp_path, *single)[0]["loss"]


def test_precision_sweep_writes_fp32_and_int8_to_int4(run_cli, tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    csv = tmp_path / "sweep.csv"
    code, stdout, stderr = run_cli("-a", "fmnist_resnet20", "-p", "0", "-ss", "200", "-pcq_w", "-pcq_a", "-ep",
                                   "--sweep-csv", csv, "--mlflow-uri", uri, "-mlexp", "sweep")
    assert code == 0, stderr
    table = pd.read_csv(csv)
    assert list(table.precision) == ["fp32", "int8", "int7", "int6", "int5", "int4"]
    assert (table.images == 200).all() and table["drop"].iloc[0] == 0
    fp32, _ = run_json(run_cli, tmp_path, "-ss", "200")
    int5, _ = run_json(run_cli, tmp_path, "-ss", "200", "-pcq_w", "-pcq_a", "--qtype", "int5", "-qw", "int5")
    assert table.top1.iloc[0] == fp32["top1"] and table.loc[table.precision == "int5", "top1"].item() == int5["top1"]
    assert "int4" in stdout and str(csv) in stdout
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["sweep"]).iloc[0]
    assert run["metrics.top1.int5"] == int5["top1"] and run["metrics.drop.fp32"] == 0


def test_measure_stats_saves_per_layer_statistics_of_the_gemm_inputs(run_cli, tmp_path):
    from inference import fashion_mnist

    result, stdout = run_json(run_cli, tmp_path, "-ss", "200", "-b", "100", *W4A4, "-ms", "-mf", tmp_path / "measured")
    path = tmp_path / "measured" / "fmnist_resnet20.activation_stats.csv"
    assert result["activation_stats_csv"] == str(path) and str(path) in stdout
    table = pd.read_csv(path).set_index("layer")
    assert len(table) == 22 and (table.batches == 2).all()
    assert ((table["min"] <= table.avg_mean) & (table.avg_mean <= table["max"])).all()
    images = fashion_mnist.InMemoryImages(*fashion_mnist.load_split(fashion_mnist.DEFAULT_DIR, "test"))[list(range(200))][0]
    assert table.loc["conv1", "min"] == pytest.approx(float(images.min()), abs=1e-6)
    assert table.loc["conv1", "max"] == pytest.approx(float(images.max()), abs=1e-6)
    code, _, _ = run_cli("-a", "fmnist_resnet20", "-ss", "100", "-p", "0", "-ms", "-mf", tmp_path / "fp32")
    assert code == 0 and (tmp_path / "fp32" / "fmnist_resnet20.activation_stats.csv").is_file()


def test_dump_dir_saves_one_batch_of_plain_tensors_without_changing_the_run(run_cli, tmp_path):
    at_inputs = [*W4A4, "--act-quant-point", "input"]
    dumped, _ = run_json(run_cli, tmp_path, "-ss", "64", "-b", "32", *at_inputs, "-me", "-dd", tmp_path / "dump")
    plain, _ = run_json(run_cli, tmp_path, "-ss", "64", "-b", "32", *at_inputs, "-me")
    assert dumped["avg.entropy.act"] == plain["avg.entropy.act"] and dumped["loss"] == plain["loss"]
    tensors = torch.load(tmp_path / "dump" / "fmnist_resnet20.batch0.pt", weights_only=True)
    assert tensors["images"].shape == (32, 1, 28, 28) and tensors["logits"].shape == (32, 10)
    assert tensors["labels"].shape == (32,) and tensors["labels"].dtype == torch.int64
    assert torch.equal(tensors["conv1.input"], tensors["images"])
    quantized = tensors["layer1.0.conv1.input_quantized"]
    assert quantized.unique().numel() <= 16 < tensors["layer1.0.conv1.input"].unique().numel()
    assert tensors["fc.output"].shape == (32, 10) and torch.equal(tensors["fc.output"], tensors["logits"])


def test_every_acceptance_command_is_logged_and_read_back(run_cli, tmp_path):
    """The CLI issue's commands: mlflow holds top1/top5 equal to the printed line, and -me averages equal
    the element-weighted mean of the per-layer entropies of --report-csv."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    stats = ["-sf", tmp_path / "stats"]
    commands = {
        "naive": [*W4A4],
        "full": FULL,
        "collect": ["-b", "1", "--qtype", "int8", "-sm", "collect", "-ac", "-cs", "32", *stats],
        "full_use": [*FULL, "-sm", "use", *stats],
        "2std": [*W4A4, "-c", "2std"],
        "layerwise_use": [*W4A4, "-c", "laplace", "-sm", "use", *stats],
        "bins": [*FULL, "-bata", "5.3", "-batw", "5.3", "-mtq", "-me", "--report-csv", tmp_path / "layers.csv"],
    }
    printed = {}
    for name, argv in commands.items():
        code, stdout, stderr = run_cli("-a", "fmnist_resnet20", "-ss", "256", "-p", "0", *argv,
                                       "--mlflow-uri", uri, "-mlexp", name)
        assert code == 0, (name, stderr)
        printed[name] = (printed_accuracy(stdout), stdout)
    mlflow.set_tracking_uri(uri)
    for name, ((top1, top5), _) in printed.items():
        run = mlflow.search_runs(experiment_names=[name])
        assert len(run) == 1 and run.loc[0, "status"] == "FINISHED"
        assert (round(run.loc[0, "metrics.top1"], 3), round(run.loc[0, "metrics.top5"], 3)) == (top1, top5)
    layers = pd.read_csv(tmp_path / "layers.csv")
    activations = layers[layers.tensor == "activation"]
    recomputed = float((activations.entropy * activations.elements).sum() / activations.elements.sum())
    logged = mlflow.search_runs(experiment_names=["bins"]).loc[0, "metrics.avg.entropy.act"]
    assert abs(logged - recomputed) < 1e-6
    line = next(line for line in printed["bins"][1].splitlines() if line.startswith("Average bit rate: avg.entropy.act - "))
    assert abs(float(line.split(" - ")[1].split()[0]) - recomputed) < 1e-4


def test_seed_long_flag_names_are_translated():
    from inference.inference_sim import build_parser
    from inference.seed_compat import translate_seed_long_names

    parser = build_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    seed = ["--per_channel_quant_act", "--per_channel_quant_weights", "--hw_scale", "--stats_mode=use", "--qtype", "int4",
            "--bit_alloc_act", "--bias_corr_weight", "--cal_set_size", "64", "--mlf_experiment", "x", "--eval_precision"]
    short = ["-pcq_a", "-pcq_w", "-hs", "-sm", "use", "--qtype", "int4", "-baa", "-bcw", "-cs", "64", "-mlexp", "x", "-ep"]
    assert vars(parser.parse_args(translate_seed_long_names(seed, known))) == vars(parser.parse_args(short))
    assert translate_seed_long_names(["--not_a_flag", "--data=/x_y"], known) == ["--not_a_flag", "--data=/x_y"]


def test_seed_command_runs_end_to_end_on_resnet50_architecture(run_cli, tmp_path, caplog):
    """The seed's exact flags on ResNet-50 with random weights standing in for the ImageNet ones, on the
    20 embedded photos. As in the seed's code, without -pcq_a / -pcq_w the tensors are per tensor and
    -baa / -baw allocate nothing (8-bit weights are never allocated either): each says so on stderr."""
    out = tmp_path / "seed.json"
    code, stdout, stderr = run_cli("-a", "resnet50", "--qtype", "int4", "-c", "laplace", "-baa", "-baw", "-bcw",
                                   "--random-init", "-p", "0", "--results-json", out)
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result["images"] == 20 and " * Prec@1" in stdout
    activations, weights = result["quantization"]["activations"], result["quantization"]["weights"]
    assert not activations["per_channel"] and not activations["bit_allocation"] and activations["bits"] == 4
    assert activations["clipping"] == "laplace" and weights["clipping"] == "no"
    assert not weights["per_channel"] and weights["bits"] == 8 and result["quantization"]["bias_correct_weights"]
    assert "-baa allocates bits per channel only with -pcq_a (as in the seed)" in caplog.text
    assert "-baw allocates bits per channel only with -pcq_w (as in the seed)" in caplog.text
    caplog.clear()
    code, _, _ = run_cli("-a", "fmnist_resnet20", "-ss", "10", "-p", "0", "-pcq_w", "-qw", "int8", "-baw")
    assert code == 0 and "-baw applies at 4 bits or fewer (as in the seed); at int8 it does nothing" in caplog.text
