// Launch shapes shared by the CUDA kernels (included by the .cu files only).
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

namespace ptq {

constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks that fill the device once (resident blocks per SM times SMs), capped by the work.
inline int64_t grid_for(int64_t threads_of_work) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t fill = int64_t{prop->multiProcessorCount} * std::max(1, prop->maxThreadsPerMultiProcessor / kThreads);
  return std::clamp<int64_t>(ceil_div(threads_of_work, kThreads), 1, fill);
}

}  // namespace ptq
