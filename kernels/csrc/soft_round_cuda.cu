// CUDA kernels of ptq_kernels::soft_round and soft_round_backward (schemas, CPU kernels and the
// conventions: soft_round_ops.cpp; per-element maths: soft_rounding.h). Grid-stride loops on the
// current stream with no host synchronisation: the grid's parameters are prepared on the device,
// grad_penalty is read on the device, and the penalty is summed in double with one atomicAdd per
// block (its last digits depend on the order of the blocks).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "cuda_launch.h"
#include "ops_common.h"
#include "soft_rounding.h"

namespace ptq {
namespace {

__device__ __forceinline__ Params grid_params(const float* scale, const float* zero_point, const float* qmax,
                                              int64_t i, int64_t inner, int64_t channels) {
  const int64_t c = channels > 1 ? (i / inner) % channels : 0;
  return Gemmlowp::prepare(scale[c], zero_point[c], qmax[c]);
}

__global__ void soft_round_kernel(const float* __restrict__ w, const float* __restrict__ v, float* __restrict__ y,
                                  double* __restrict__ penalty, const float* scale, const float* zero_point,
                                  const float* qmax, int64_t n, int64_t inner, int64_t channels, float beta,
                                  bool penalised) {
  __shared__ double partial[kThreads];
  double sum = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Params p = grid_params(scale, zero_point, qmax, i, inner, channels);
    const SoftRounding r = soft_rounding(w[i], v[i], p);
    y[i] = soft_rounded_value(r, p);
    if (penalised) sum += static_cast<double>(rounding_penalty(r.h, beta));
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0 && penalised) atomicAdd(penalty, partial[0]);
}

__global__ void soft_round_backward_kernel(const float* __restrict__ grad_y, const float* __restrict__ grad_penalty,
                                           const float* __restrict__ w, const float* __restrict__ v,
                                           float* __restrict__ grad_v, const float* scale, const float* zero_point,
                                           const float* qmax, int64_t n, int64_t inner, int64_t channels, float beta,
                                           bool penalised) {
  const float penalty_grad = penalised ? *grad_penalty : 0.0f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Params p = grid_params(scale, zero_point, qmax, i, inner, channels);
    grad_v[i] = soft_rounding_grad(soft_rounding(w[i], v[i], p), p, grad_y[i], penalty_grad, beta);
  }
}

std::tuple<at::Tensor, at::Tensor> soft_round(const at::Tensor& w, const at::Tensor& v, const at::Tensor& scale,
                                              const at::Tensor& zero_point, const at::Tensor& qmax, int64_t axis,
                                              double beta) {
  const c10::cuda::CUDAGuard guard(w.device());
  const SoftRoundOperands o = checked_soft_round_operands("soft_round", w, v, scale, zero_point, qmax, axis);
  const Layout lay = layout_of(o.weight, axis);
  at::Tensor out = at::empty_like(o.weight);
  at::Tensor penalty = at::zeros({}, o.weight.options().dtype(at::kDouble));
  if (lay.numel() > 0) {
    soft_round_kernel<<<static_cast<unsigned>(grid_for(lay.numel())), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        o.weight.data_ptr<float>(), o.logits.data_ptr<float>(), out.data_ptr<float>(), penalty.data_ptr<double>(),
        o.scale.data_ptr<float>(), o.zero_point.data_ptr<float>(), o.qmax.data_ptr<float>(), lay.numel(), lay.inner,
        lay.channels, static_cast<float>(beta), beta > 0.0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out, penalty.to(at::kFloat)};
}

at::Tensor soft_round_backward(const at::Tensor& grad_y, const at::Tensor& grad_penalty, const at::Tensor& w,
                               const at::Tensor& v, const at::Tensor& scale, const at::Tensor& zero_point,
                               const at::Tensor& qmax, int64_t axis, double beta) {
  const c10::cuda::CUDAGuard guard(w.device());
  const char* op = "soft_round_backward";
  const SoftRoundOperands o = checked_soft_round_operands(op, w, v, scale, zero_point, qmax, axis);
  const at::Tensor grad = laid_out_like(grad_y, o.weight, op, "grad_y");
  const at::Tensor penalty = checked_scalar(grad_penalty, o.weight, op, "grad_penalty");
  const Layout lay = layout_of(o.weight, axis);
  at::Tensor out = at::empty_like(o.weight);
  if (lay.numel() > 0) {
    soft_round_backward_kernel<<<static_cast<unsigned>(grid_for(lay.numel())), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad.data_ptr<float>(), penalty.data_ptr<float>(), o.weight.data_ptr<float>(), o.logits.data_ptr<float>(),
        out.data_ptr<float>(), o.scale.data_ptr<float>(), o.zero_point.data_ptr<float>(), o.qmax.data_ptr<float>(),
        lay.numel(), lay.inner, lay.channels, static_cast<float>(beta), beta > 0.0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace
}  // namespace ptq

TORCH_LIBRARY_IMPL(ptq_kernels, CUDA, m) {
  m.impl("soft_round", &ptq::soft_round);
  m.impl("soft_round_backward", &ptq::soft_round_backward);
}
