"""The CLI is a thin shell over the library: the same recipe through ``ptq-sim`` and through
``pytorch_quantizer.quantize`` gives bit-identical logits; the package is installed (console
command, ``python -m``, from any folder); the README's Python example runs as written."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pytorch_quantizer as pq
from conftest import REPO_ROOT
from inference.data import CalibrationChoice, LoaderOptions, make_loader, prepare_data
from inference.models import create_model, get_model_spec

IMAGES, BATCH, CALIBRATION = 48, 24, 48


def library_logits(config: pq.QuantConfig, methods: pq.Methods) -> torch.Tensor:
    """The first evaluated batch's logits of the library call: the CLI's calibration split and
    evaluation order (its data code), the model from the registry, the recipe in library terms."""
    spec = get_model_spec("fmnist_resnet20")
    data = prepare_data(spec, None, CalibrationChoice(None, None, CALIBRATION), 0)
    options = LoaderOptions(BATCH, 0, IMAGES, False, 0)
    calibration = data.calibration_loader(options).loader
    qmodel = pq.quantize(create_model("fmnist_resnet20"), config, calibration=calibration, methods=methods)
    images, _ = next(iter(make_loader(data.evaluation, options)))
    with torch.no_grad():
        return qmodel(images)


@pytest.mark.parametrize("flags, config, methods", [
    (["--qtype", "int8", "-qw", "int4", "-pcq_w", "-c", "laplace", "-ac"],
     pq.QuantConfig(activations=pq.TensorQuantSpec(8, clipping="laplace"), weights=pq.TensorQuantSpec(4, per_channel=True),
                    keep_8bit=("conv1", "fc")), pq.Methods()),
    (["--qtype", "int8", "-qw", "int4", "-pcq_w", "-ac", "--reconstruct", "block", "--recon-iters", "4",
      "--recon-batch", "16", "--improved"],
     pq.QuantConfig(activations=pq.TensorQuantSpec(8), weights=pq.TensorQuantSpec(4, per_channel=True),
                    keep_8bit=("conv1", "fc"), act_quant_point=pq.ActQuantPoint.INPUT, departures=pq.Departures.all()),
     pq.Methods(rounding="block", rounding_steps=4, rounding_batch=16)),
])
def test_cli_and_library_give_identical_logits(run_cli, tmp_path, flags, config, methods):
    code, _, stderr = run_cli("-a", "fmnist_resnet20", "-ss", IMAGES, "-b", BATCH, "-j", 0, "-cs", CALIBRATION,
                              "-dd", tmp_path, *flags)
    assert code == 0, stderr
    dumped = torch.load(tmp_path / "fmnist_resnet20.batch0.pt", weights_only=True)
    assert torch.equal(dumped["logits"], library_logits(config, methods))


def test_console_command_and_module_run_from_any_folder(tmp_path):
    command = Path(sys.executable).with_name("ptq-sim")
    assert command.exists(), "pip install -e . (build_all.sh) installs the console command"
    for argv in ([str(command), "--help"], [sys.executable, "-m", "inference.inference_sim", "--help"]):
        shown = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert "--per-channel-weights" in shown.stdout and "package.module:function" in shown.stdout


def test_the_readme_python_example_runs_as_written(tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace = {}
        exec(compile(example, "README.md", "exec"), namespace)
    finally:
        os.chdir(previous)
    assert (tmp_path / "model.w4a8.pt").is_file()
    qmodel, logits = namespace["qmodel"], namespace["logits"]
    assert isinstance(qmodel, pq.QuantizedNetwork) and logits.shape == (2, 1000)


def test_the_project_edits_no_import_path():
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.ipynb", "*.sh", "*.ini", "*.toml", "*.cfg"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    offenders = [name for name in tracked if name != "tests/test_cli_library_parity.py"
                 and "sys.path" in (REPO_ROOT / name).read_text() and (REPO_ROOT / name).exists()]
    assert not offenders and shutil.which("git")
