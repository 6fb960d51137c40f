"""``-a`` beyond the registry: a torchvision classifier by name and a user's factory
``package.module:function``, with the preprocessing flags of models the registry cannot know."""
import json

import pytest
import torch

from model_factories import imagenet_small_cnn

ERROR = "inference_sim.py: error: "


def test_a_torchvision_model_by_name_runs_with_its_own_preprocessing(run_cli, tmp_path):
    results = tmp_path / "results.json"
    code, _, stderr = run_cli("-a", "mobilenet_v3_small", "--random-init", "-ss", "4", "-b", "4", "--qtype", "int8",
                              "--input-size", "96", "--results-json", results)
    assert code == 0, stderr
    written = json.loads(results.read_text())
    assert written["arch"] == "mobilenet_v3_small" and written["images"] == 4 and written["weights"] == "random"
    assert written["quantization"]["keep_8bit"] == ["features.0.0", "classifier.3"]   # its first and last layers


def test_a_torchvision_model_without_weights_says_where_to_put_them(run_cli):
    code, _, stderr = run_cli("-a", "mobilenet_v3_small", "-ss", "4", "--qtype", "int8")
    assert code == 2 and "download https://download.pytorch.org/models/mobilenet_v3_small" in stderr
    assert "or pass --weights PATH" in stderr


def test_a_factory_of_the_users_own_model_with_its_weights(run_cli, tmp_path):
    weights, results = tmp_path / "small.pt", tmp_path / "results.json"
    model = imagenet_small_cnn()
    torch.save(model.state_dict(), weights)
    code, _, stderr = run_cli("-a", "model_factories:imagenet_small_cnn", "--weights", weights, "--input-size", "64",
                              "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "-b", "10",
                              "--qtype", "int8", "-qw", "int8", "--compare-fp32", "--results-json", results)
    assert code == 0, stderr
    written = json.loads(results.read_text())
    assert written["images"] == 20 and written["top1_agreement"] >= 90   # the 20 ImageNet photos of foolbox
    assert written["weights"] == str(weights)


@pytest.mark.parametrize("argv, message", [
    (("-a", "no_such_model"), "unknown model 'no_such_model': choose one of the registry"),
    (("-a", "no_such_package.models:build", "--random-init"), "-a no_such_package.models:build: cannot import "
                                                              "no_such_package.models"),
    (("-a", "model_factories:missing", "--random-init"), "model_factories has no function missing"),
    (("-a", "model_factories:imagenet_small_cnn"), "pass the state dict of your trained model with --weights PATH"),
    (("-a", "fmnist_resnet20", "--input-size", "64"), "registry model with its own preprocessing"),
    (("-a", "mobilenet_v3_small", "--random-init", "--input-size", "96", "--resize", "64"),
     "--resize 64 is below the input size 96"),
    (("-a", "mobilenet_v3_small", "--random-init", "--std", "1", "0", "1"), "standard deviations must be positive"),
])
def test_bad_model_choices_are_one_line_errors(run_cli, argv, message):
    code, _, stderr = run_cli(*argv, "-ss", "4")
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR)]
    assert code == 2 and len(errors) == 1 and message in errors[0], stderr
