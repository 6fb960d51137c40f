"""What the kernel test modules share: the built CPU extension (or a module-level skip), the op
namespace, the backend reset after each test, the CUDA marker and ops, and the axes and memory layouts every op is checked on."""
import pytest
import torch

AXES = (None, 0, 1, 3)
LAYOUTS = ("contiguous", "channels_last")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def reset_backend():
    """Each test leaves the backend at ``auto`` whatever it set."""
    from pytorch_quantizer.quantizers import backend

    yield
    backend.set_backend("auto")


def kernel_ops():
    """torch.ops.ptq_kernels after building the CPU extension; skips the calling test module if it cannot."""
    try:
        from kernels import build

        build.build_cpu()
    except (ImportError, OSError, RuntimeError) as error:
        pytest.skip(f"the ptq_kernels CPU extension cannot be built or loaded: {error}", allow_module_level=True)
    return torch.ops.ptq_kernels


@pytest.fixture(scope="module")
def cuda_ops():
    """torch.ops.ptq_kernels with the CUDA extension built (its tests are marked ``needs_cuda``)."""
    from kernels import build

    build.build_cuda()
    return torch.ops.ptq_kernels


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()
