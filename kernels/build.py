"""Build and load the ``ptq_kernels`` extensions (JIT: torch.utils.cpp_extension.load with ninja).

    python kernels/build.py                      # CPU; CUDA too when a GPU is visible
    python kernels/build.py --cuda-compile-only  # also compile and link the CUDA one without a GPU

The CPU extension defines the ops (schemas and CPU kernels); the CUDA extension adds CUDA kernels
to them, so the CPU one is loaded first. Builds go to kernels/build/{cpu,cuda}/. Beside each
library a stamp file holds a fingerprint of its sources, flags and torch version: ``load_cpu()`` /
``load_cuda()`` load an up-to-date library directly, with no compiler, ninja or lock involved.

Flags: -O3 -mavx2 -mfma (never -march=native: the library must run on other x86-64 hosts),
-fopenmp at compile and link time (else at::parallel_for runs on one thread), FMA contraction off on
both CPU and GPU so that results match the PyTorch reference bit for bit, and -fno-trapping-math
(values unchanged; no floating-point traps are assumed) so that GCC vectorises floorf and the selects.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

KERNELS_DIR = Path(__file__).resolve().parent
CSRC = KERNELS_DIR / "csrc"
BUILD_ROOT = KERNELS_DIR / "build"
HEADERS = ("quant_math.h", "ops_common.h", "soft_rounding.h", "cuda_launch.h")
DEFAULT_CUDA_ARCH = "9.0"  # H100 / H200, used when no GPU is visible to ask for its capability


@dataclass(frozen=True)
class Extension:
    name: str
    kind: str
    sources: tuple[str, ...]
    cflags: tuple[str, ...]
    cuda_cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()

    @property
    def build_dir(self) -> Path:
        return BUILD_ROOT / self.kind

    @property
    def library(self) -> Path:
        return self.build_dir / f"{self.name}.so"

    @property
    def stamp(self) -> Path:
        return self.build_dir / f"{self.name}.stamp"

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in (*self.sources, *HEADERS):
            digest.update((CSRC / name).read_bytes())
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if self.kind == "cuda" else ""
        for part in (*self.cflags, *self.cuda_cflags, *self.ldflags, torch.__version__, str(torch.version.cuda), arch):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()


CPU = Extension("ptq_kernels_cpu", "cpu",
                ("quant_ops.cpp", "select_ops.cpp", "soft_round_ops.cpp", "depthwise_ops.cpp"),
                cflags=("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"), ldflags=("-fopenmp",))
CUDA = Extension("ptq_kernels_cuda", "cuda", ("quant_ops_cuda.cu", "select_ops_cuda.cu", "soft_round_cuda.cu"),
                 cflags=("-O3", "-ffp-contract=off"), cuda_cflags=("-O3", "--fmad=false"))


def _is_loaded(ext: Extension) -> bool:
    return str(ext.library) in torch.ops.loaded_libraries


def _after_load() -> None:
    from kernels import fake
    fake.register()


def _import_cpp_extension():
    """torch.utils.cpp_extension, imported with CUDA_HOME set; its import-time warning that no CUDA
    runtime is found is expected without a GPU and is silenced."""
    _configure_cuda_environment()
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def _build(ext: Extension, verbose: bool, include_dirs: list[str] | None = None) -> Path:
    cpp_extension = _import_cpp_extension()
    ext.build_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = ext.fingerprint()  # of the sources as compiled (they may change while ninja runs)
    started = time.perf_counter()
    cpp_extension.load(
        name=ext.name, sources=[str(CSRC / source) for source in ext.sources], extra_cflags=list(ext.cflags),
        extra_cuda_cflags=list(ext.cuda_cflags), extra_ldflags=list(ext.ldflags),
        extra_include_paths=[str(CSRC), *(include_dirs or [])], build_directory=str(ext.build_dir),
        verbose=verbose, is_python_module=False)
    ext.stamp.write_text(fingerprint + "\n")
    log.info("ptq_kernels: %s extension ready in %.1f s (%s)", ext.kind, time.perf_counter() - started, ext.library)
    _after_load()
    return ext.library


def _load_built(ext: Extension) -> bool:
    if _is_loaded(ext):
        return True
    if not ext.library.exists() or not ext.stamp.exists():
        return False
    if ext.stamp.read_text().strip() != ext.fingerprint():
        log.info("ptq_kernels: %s is out of date with its sources", ext.library)
        return False
    torch.ops.load_library(str(ext.library))
    _after_load()
    return True


def load_cpu() -> bool:
    """Load the built CPU extension if it is up to date (no compilation); True when the ops are available."""
    return _load_built(CPU)


def load_cuda() -> bool:
    """Load the built CUDA kernels (after the CPU extension) if both are up to date."""
    _configure_cuda_environment()
    return load_cpu() and _load_built(CUDA)


def build_cpu(verbose: bool = False) -> Path:
    """Compile (when sources or flags changed) and load the CPU extension; return the library path."""
    if _load_built(CPU):
        return CPU.library
    return _build(CPU, verbose)


def nvcc_path() -> str | None:
    home = os.environ.get("CUDA_HOME")
    candidate = Path(home) / "bin" / "nvcc" if home else None
    return str(candidate) if candidate and candidate.exists() else shutil.which("nvcc")


def _cuda_home() -> str | None:
    """The real toolkit: /usr/local/bin/nvcc may be a wrapper, from which torch would guess /usr/local."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def _configure_cuda_environment() -> None:
    """CUDA_HOME and, when no GPU is visible to report its capability, TORCH_CUDA_ARCH_LIST."""
    home = _cuda_home()
    if home:
        os.environ.setdefault("CUDA_HOME", home)
        cpp_extension = sys.modules.get("torch.utils.cpp_extension")
        if cpp_extension is not None and cpp_extension.CUDA_HOME != home:  # imported before CUDA_HOME was set
            cpp_extension.CUDA_HOME = home
    if not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH)


def _cuda_include_dirs() -> list[str]:
    """cuBLAS/cuSPARSE headers that ATen/cuda/CUDAContext.h includes ship in the nvidia pip packages."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    return [str(Path(root) / sub / "include") for root in roots for sub in ("cu13", "cu12")
            if (Path(root) / sub / "include").is_dir()]


def build_cuda(verbose: bool = False) -> Path:
    """Compile (when needed) and load the CUDA kernels; works without a GPU (compile and link only)."""
    if torch.version.cuda is None:
        raise RuntimeError("ptq_kernels: this torch build has no CUDA support")
    _configure_cuda_environment()
    if nvcc_path() is None:
        raise RuntimeError("ptq_kernels: nvcc not found (set CUDA_HOME to the CUDA toolkit)")
    build_cpu(verbose)
    if _load_built(CUDA):
        return CUDA.library
    return _build(CUDA, verbose, _cuda_include_dirs())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the ptq_kernels C++/CUDA extensions.")
    parser.add_argument("--cuda-compile-only", action="store_true",
                        help="build the CUDA extension even though no GPU is visible (checks that it compiles and links)")
    parser.add_argument("--no-cuda", action="store_true", help="build the CPU extension only")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("MAX_JOBS", "2")
    build_cpu(args.verbose)
    wants_cuda = not args.no_cuda and (torch.cuda.is_available() or args.cuda_compile_only)
    if wants_cuda and torch.version.cuda is not None:
        _configure_cuda_environment()
        if nvcc_path() is None:
            log.warning("ptq_kernels: nvcc not found: CUDA extension not built")
        else:
            build_cuda(args.verbose)
    elif wants_cuda:
        log.warning("ptq_kernels: torch %s has no CUDA support: CUDA extension not built", torch.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
