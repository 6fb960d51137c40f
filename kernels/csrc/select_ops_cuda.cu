// CUDA kernel of ptq_kernels::qdrop_select (schema and CPU kernel: select_ops.cpp). One grid-stride
// pass on the current stream, no host synchronisation; the draw is the CPU kernel's, element for
// element, so both devices drop the same elements for a seed.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_launch.h"
#include "ops_common.h"

namespace ptq {
namespace {

__global__ void select_kernel(const float* __restrict__ x, const float* __restrict__ q, float* __restrict__ y,
                              int64_t n, float p, RngKey key) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const auto counter = static_cast<uint64_t>(i);
    y[i] = qdrop_pick(x[i], q[i], uniform01(key, static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32)),
                      p);
  }
}

at::Tensor qdrop_select(const at::Tensor& x, const at::Tensor& q, double p, int64_t seed) {
  const c10::cuda::CUDAGuard guard(x.device());
  const SelectPair pair = checked_select_pair(x, q, p);
  const int64_t n = pair.out.numel();
  if (n == 0) return pair.out;
  const auto grid = static_cast<unsigned>(grid_for(n));
  select_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      pair.src.data_ptr<float>(), pair.values.data_ptr<float>(), pair.out.data_ptr<float>(), n,
      static_cast<float>(p), rng_key(seed));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return pair.out;
}

}  // namespace
}  // namespace ptq

TORCH_LIBRARY_IMPL(ptq_kernels, CUDA, m) {
  m.impl("qdrop_select", &ptq::qdrop_select);
}
