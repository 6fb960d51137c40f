"""Threaded image decoding (-j) and the CLI's glibc malloc re-execution."""
import os
import subprocess
import sys

import torch

from inference.allocator import OPT_OUT, TUNED_MALLOC, tuned_environment
from inference.data import LoaderOptions, evaluation_loader
from inference.image_batches import ThreadedImageBatches
from inference.image_files import LabelledImageFiles
from inference.models import get_model_spec


def test_decoding_threads_yield_the_same_batches_in_order():
    spec = get_model_spec("efficientnet_lite0")
    batches = {threads: list(evaluation_loader(spec, None, LoaderOptions(batch_size=6, workers=threads)))
               for threads in (0, 1, 3)}
    assert [len(labels) for _, labels in batches[0]] == [6, 6, 6, 2]
    for threads in (1, 3):
        for (images, labels), (expected_images, expected_labels) in zip(batches[threads], batches[0]):
            assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_stopping_early_cancels_the_pending_decodes():
    decoded = []

    def transform(image):
        decoded.append(image.size)
        return torch.zeros(1)

    spec_files = evaluation_loader(get_model_spec("efficientnet_lite0"), None, LoaderOptions(workers=0)).dataset.files
    dataset = LabelledImageFiles(spec_files, list(range(len(spec_files))), transform)
    loader = ThreadedImageBatches(dataset, [[index] for index in range(len(spec_files))], threads=1)
    for _ in loader:
        break
    assert len(decoded) < len(spec_files)


def test_tuned_environment_adds_only_what_the_user_has_not_set():
    assert tuned_environment({"PATH": "/bin"}) == {"PATH": "/bin", **TUNED_MALLOC}
    mine = {"MALLOC_MMAP_THRESHOLD_": "1024"}
    assert tuned_environment(mine)["MALLOC_MMAP_THRESHOLD_"] == "1024"
    assert tuned_environment({**TUNED_MALLOC}) is None
    assert tuned_environment({OPT_OUT: "1"}) is None


def test_the_process_reexecutes_once_with_the_tuned_thresholds():
    script = ("import os, sys; "
              "from inference.allocator import reexecute_with_tuned_malloc; reexecute_with_tuned_malloc(); "
              "print(os.environ['MALLOC_MMAP_THRESHOLD_'], os.environ['MALLOC_TRIM_THRESHOLD_'], sys.argv[1])")
    environment = {key: value for key, value in os.environ.items() if key not in TUNED_MALLOC and key != OPT_OUT}
    output = subprocess.run([sys.executable, "-c", script, "kept"], env=environment,
                            capture_output=True, text=True, check=True).stdout.split()
    assert output == [TUNED_MALLOC["MALLOC_MMAP_THRESHOLD_"], TUNED_MALLOC["MALLOC_TRIM_THRESHOLD_"], "kept"]
