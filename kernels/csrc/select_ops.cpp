// ptq_kernels::qdrop_select: QDrop's random choice between a float tensor and its quantized values
// in one pass, the uniform draw made in place from the counter hash of quant_math.h (no random
// tensor, no mask). Schema and CPU kernel here; CUDA kernel in select_ops_cuda.cu.
//
//   y[i] = x[i]  if uniform01(seed, i) < p   else   q[i]      (i: memory offset in x's dense layout)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops_common.h"

namespace ptq {
namespace {

constexpr int64_t kGrain = 1 << 15;

void select_elements(const float* __restrict__ x, const float* __restrict__ q, float* __restrict__ y, int64_t n,
                     float p, RngKey key, int64_t base) {
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t counter = static_cast<uint64_t>(base + j);
    y[j] = qdrop_pick(x[j], q[j], uniform01(key, static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32)), p);
  }
}

at::Tensor qdrop_select(const at::Tensor& x, const at::Tensor& q, double p, int64_t seed) {
  const SelectPair pair = checked_select_pair(x, q, p);
  const float *src = pair.src.data_ptr<float>(), *values = pair.values.data_ptr<float>();
  float* out = pair.out.data_ptr<float>();
  const RngKey key = rng_key(seed);
  const auto probability = static_cast<float>(p);
  at::parallel_for(0, pair.out.numel(), kGrain, [&](int64_t begin, int64_t end) {
    select_elements(src + begin, values + begin, out + begin, end - begin, probability, key, begin);
  });
  return pair.out;
}

}  // namespace
}  // namespace ptq

TORCH_LIBRARY_FRAGMENT(ptq_kernels, m) {
  m.def("qdrop_select(Tensor x, Tensor q, float p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(ptq_kernels, CPU, m) {
  m.impl("qdrop_select", &ptq::qdrop_select);
}
