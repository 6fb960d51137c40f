// CUDA kernels of the ptq_kernels ops. Schemas and CPU kernels: quant_ops.cpp; formulas: quant_math.h.
//
// Everything runs on the current stream with no host synchronisation. Grids are sized from the
// device's SM count and the amount of work. Indices are 32-bit when the tensor allows it (integer
// division, needed to find an element's channel, is much cheaper in 32 bits).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "cuda_launch.h"
#include "ops_common.h"

namespace ptq {
namespace {

constexpr int64_t kRowMaxInner = 32;              // channel runs shorter than a warp are reduced row by row ...
constexpr int kRowSlots = 4;                      // ... when a row fits in kRowSlots positions per thread
constexpr int64_t kRowMaxLength = kThreads * kRowSlots;
constexpr int64_t kSharedHistogramSlots = 4096;   // per-block histograms in shared memory up to this size

template <class Op>
__global__ void prepare_kernel(const float* p0, const float* p1, const float* p2, Params* out, int64_t n) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c < n) out[c] = Op::prepare(p0[c], p1[c], p2[c]);
}

template <class Op, bool S, bool Codes, class Index>
__device__ __forceinline__ float quantize_at(float v, Index i, Index inner, Index channels,
                                             const Params* __restrict__ params, RngKey key) {
  const Params p = params[channels > 1 ? (i / inner) % channels : 0];
  const uint64_t counter = static_cast<uint64_t>(i);
  const float u = S ? uniform01(key, static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32)) : 0.0f;
  return quantize_one<Op, S, Codes>(v, p, u);
}

// Grid-stride loop over a dense tensor in memory order; 16-byte loads and stores when aligned.
template <class Op, bool S, bool Codes, bool Vec4, class Index>
__global__ void quantize_kernel(const float* __restrict__ x, float* __restrict__ y, Index n, Index inner,
                                Index channels, const Params* __restrict__ params, RngKey key) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  const Index first = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  Index scalar_from = 0;
  if (Vec4) {
    const Index vectors = n / 4;
    for (Index v = first; v < vectors; v += stride) {
      float4 a = reinterpret_cast<const float4*>(x)[v];
      const Index i = 4 * v;
      a.x = quantize_at<Op, S, Codes>(a.x, i, inner, channels, params, key);
      a.y = quantize_at<Op, S, Codes>(a.y, i + 1, inner, channels, params, key);
      a.z = quantize_at<Op, S, Codes>(a.z, i + 2, inner, channels, params, key);
      a.w = quantize_at<Op, S, Codes>(a.w, i + 3, inner, channels, params, key);
      reinterpret_cast<float4*>(y)[v] = a;
    }
    scalar_from = 4 * vectors;
  }
  for (Index i = scalar_from + first; i < n; i += stride) {
    y[i] = quantize_at<Op, S, Codes>(x[i], i, inner, channels, params, key);
  }
}

template <class Op, bool S, bool Codes, class Index>
void launch_quantize(const float* x, float* y, const Layout& lay, const Params* params, RngKey key) {
  const int64_t n = lay.numel();
  const bool vec4 = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  const auto grid = static_cast<unsigned>(grid_for(vec4 ? ceil_div(n, 4) : n));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto kernel = vec4 ? quantize_kernel<Op, S, Codes, true, Index> : quantize_kernel<Op, S, Codes, false, Index>;
  kernel<<<grid, kThreads, 0, stream>>>(x, y, static_cast<Index>(n), static_cast<Index>(lay.inner),
                                        static_cast<Index>(lay.channels), params, key);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class Op>
at::Tensor quantize_cuda(const char* op, const at::Tensor& x, const at::Tensor& p0, const at::Tensor& p1,
                         const at::Tensor& p2, const char* const (&names)[3], int64_t axis, int64_t seed,
                         bool stochastic, bool codes) {
  const auto [c0, c1, c2] = checked_params(op, x, p0, p1, p2, names, axis);
  const c10::cuda::CUDAGuard guard(x.device());
  const DensePair dp = dense_pair(x);
  const Layout lay = layout_of(dp.src, axis);
  if (lay.numel() == 0) return dp.out;
  const int64_t channels = c0.numel();
  at::Tensor params = at::empty({channels * 4}, x.options());  // Params[channels], 16-byte aligned
  Params* prepared = reinterpret_cast<Params*>(params.data_ptr<float>());
  prepare_kernel<Op><<<static_cast<unsigned>(ceil_div(channels, kThreads)), kThreads, 0,
                       at::cuda::getCurrentCUDAStream()>>>(c0.data_ptr<float>(), c1.data_ptr<float>(),
                                                           c2.data_ptr<float>(), prepared, channels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const float* src = dp.src.data_ptr<float>();
  float* out = dp.out.data_ptr<float>();
  const RngKey key = rng_key(seed);
  const bool small = lay.numel() < (int64_t{1} << 31);
  const auto run = [&](auto s, auto k) {
    constexpr bool S = decltype(s)::value, K = decltype(k)::value;
    small ? launch_quantize<Op, S, K, uint32_t>(src, out, lay, prepared, key)
          : launch_quantize<Op, S, K, int64_t>(src, out, lay, prepared, key);
  };
  with_static_flags(stochastic, codes, run);
  return dp.out;
}

struct CudaQuantize {
  template <class Op, class... Args>
  static at::Tensor run(Args&&... args) { return quantize_cuda<Op>(std::forward<Args>(args)...); }
};

// ---- level-set quantization: the tables (K - 1 thresholds, then K values) are staged in shared
// memory when they fit, else read from global memory (through the cache).

constexpr int64_t kSharedTableFloats = 4096;

template <bool Shared, class Index>
__global__ void threshold_kernel(const float* __restrict__ x, float* __restrict__ y, Index n, Index inner,
                                 Index channels, const float* __restrict__ scale,
                                 const float* __restrict__ thresholds, const float* __restrict__ values,
                                 int32_t num_thresholds) {
  extern __shared__ float table[];
  const float* t = thresholds;
  const float* v = values;
  if (Shared) {
    for (int32_t j = threadIdx.x; j < 2 * num_thresholds + 1; j += blockDim.x) {
      table[j] = j < num_thresholds ? thresholds[j] : values[j - num_thresholds];
    }
    __syncthreads();
    t = table;
    v = table + num_thresholds;
  }
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float s = scale[channels > 1 ? (i / inner) % channels : 0];
    y[i] = threshold_quantize_one(x[i], s, t, num_thresholds, v);
  }
}

template <class Index>
void launch_threshold(const float* x, float* y, const Layout& lay, const LevelSet& set) {
  const auto num_thresholds = static_cast<int32_t>(set.thresholds.numel());
  const int64_t table_floats = 2 * int64_t{num_thresholds} + 1;
  const bool shared = table_floats <= kSharedTableFloats;
  const auto grid = static_cast<unsigned>(grid_for(lay.numel()));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto kernel = shared ? threshold_kernel<true, Index> : threshold_kernel<false, Index>;
  kernel<<<grid, kThreads, shared ? table_floats * sizeof(float) : 0, stream>>>(
      x, y, static_cast<Index>(lay.numel()), static_cast<Index>(lay.inner), static_cast<Index>(lay.channels),
      set.scale.data_ptr<float>(), set.thresholds.data_ptr<float>(), set.values.data_ptr<float>(), num_thresholds);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor threshold_quant(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& thresholds,
                           const at::Tensor& values, int64_t axis) {
  const LevelSet set = checked_level_set(x, scale, thresholds, values, axis);
  const c10::cuda::CUDAGuard guard(x.device());
  const DensePair dp = dense_pair(x);
  const Layout lay = layout_of(dp.src, axis);
  if (lay.numel() == 0) return dp.out;
  const float* src = dp.src.data_ptr<float>();
  float* out = dp.out.data_ptr<float>();
  if (lay.numel() < (int64_t{1} << 31)) {
    launch_threshold<uint32_t>(src, out, lay, set);
  } else {
    launch_threshold<int64_t>(src, out, lay, set);
  }
  return dp.out;
}

// ---- per-channel reductions: partial accumulators per block, then one thread per channel folds
// them in a fixed order (deterministic for a given device).

template <class Acc>
__device__ Acc block_reduce(Acc acc) {
  __shared__ Acc shared[kThreads];
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x].merge(shared[threadIdx.x + half]);
    __syncthreads();
  }
  return shared[0];
}

// Long channel runs: block b reduces part b % parts of channel b / parts (elements k of the
// channel, k = outer index * inner + inner index) into partial[part * channels + channel].
template <class Acc, class Index>
__global__ void reduce_runs_kernel(const float* __restrict__ x, Index outer, Index channels, Index inner,
                                   Index parts, const double* __restrict__ centers, Acc* __restrict__ partial) {
  const Index channel = blockIdx.x / parts, part = blockIdx.x % parts;
  const Index count = outer * inner, row = channels * inner;
  const double center = centers ? centers[channel] : 0.0;
  Acc acc = Acc::identity();
  for (Index k = part * kThreads + threadIdx.x; k < count; k += parts * kThreads) {
    acc.add(x[(k / inner) * row + channel * inner + k % inner], center);
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) partial[part * channels + channel] = acc;
}

// Short runs (e.g. channels_last): block g reduces rows g, g + G, ...; thread t owns row positions
// t, t + kThreads, ... and writes them to partial[g * row + position].
template <class Acc, class Index>
__global__ void reduce_rows_kernel(const float* __restrict__ x, Index outer, Index row, Index inner,
                                   const double* __restrict__ centers, Acc* __restrict__ partial) {
  Acc acc[kRowSlots];
  double center[kRowSlots];
#pragma unroll
  for (int s = 0; s < kRowSlots; ++s) {
    const Index j = threadIdx.x + s * kThreads;
    acc[s] = Acc::identity();
    center[s] = centers && j < row ? centers[j / inner] : 0.0;
  }
  for (Index r = blockIdx.x; r < outer; r += gridDim.x) {
#pragma unroll
    for (int s = 0; s < kRowSlots; ++s) {
      const Index j = threadIdx.x + s * kThreads;
      if (j < row) acc[s].add(x[r * row + j], center[s]);
    }
  }
#pragma unroll
  for (int s = 0; s < kRowSlots; ++s) {
    const Index j = threadIdx.x + s * kThreads;
    if (j < row) partial[blockIdx.x * row + j] = acc[s];
  }
}

// Channel c folds entries m < count at partial[(m / group) * pitch + c * group + m % group].
template <class Acc, class Emit>
__global__ void fold_kernel(const Acc* __restrict__ partial, int64_t channels, int64_t count, int64_t group,
                            int64_t pitch, Emit emit) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= channels) return;
  Acc acc = Acc::identity();
  for (int64_t m = 0; m < count; ++m) acc.merge(partial[(m / group) * pitch + c * group + m % group]);
  emit(c, acc);
}

struct EmitMoments {
  float* min;
  float* max;
  double* sum;
  double* sumsq;
  __device__ void operator()(int64_t c, const MomentsAcc& acc) const {
    const MomentsAcc a = acc.finished();
    min[c] = a.min, max[c] = a.max, sum[c] = a.sum, sumsq[c] = a.sumsq;
  }
};

struct EmitMeanAbsDev {
  double* out;
  double count;
  __device__ void operator()(int64_t c, const AbsDevAcc& a) const { out[c] = a.sum / count; }
};

template <class Acc, class Index, class Emit>
void reduce_channels_cuda(const at::Tensor& src, const Layout& lay, const double* centers, const Emit& emit) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t channels = lay.channels, row = lay.row();
  const bool rows = channels > 1 && lay.inner < kRowMaxInner && row <= kRowMaxLength;
  const int64_t blocks = rows ? std::min(grid_for(lay.numel()), std::max<int64_t>(lay.outer, 1))
                              : std::max<int64_t>(1, grid_for(lay.numel()) / channels);
  const int64_t entries = rows ? blocks * row : blocks * channels;
  at::Tensor buffer = at::empty({entries * static_cast<int64_t>(sizeof(Acc))}, src.options().dtype(at::kByte));
  Acc* partial = reinterpret_cast<Acc*>(buffer.data_ptr());
  const float* x = src.data_ptr<float>();
  if (rows) {
    reduce_rows_kernel<Acc, Index><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        x, static_cast<Index>(lay.outer), static_cast<Index>(row), static_cast<Index>(lay.inner), centers, partial);
  } else {
    reduce_runs_kernel<Acc, Index><<<static_cast<unsigned>(blocks * channels), kThreads, 0, stream>>>(
        x, static_cast<Index>(lay.outer), static_cast<Index>(channels), static_cast<Index>(lay.inner),
        static_cast<Index>(blocks), centers, partial);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t group = rows ? lay.inner : 1, pitch = rows ? row : channels;
  fold_kernel<Acc><<<static_cast<unsigned>(ceil_div(channels, kThreads)), kThreads, 0, stream>>>(
      partial, channels, blocks * group, group, pitch, emit);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class Acc, class Emit>
void reduce_dispatch(const at::Tensor& src, const Layout& lay, const double* centers, const Emit& emit) {
  if (lay.numel() < (int64_t{1} << 31)) {
    reduce_channels_cuda<Acc, uint32_t>(src, lay, centers, emit);
  } else {
    reduce_channels_cuda<Acc, int64_t>(src, lay, centers, emit);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> channel_stats(const at::Tensor& x, int64_t axis) {
  check_input(x, axis, "channel_stats");
  TORCH_CHECK(x.numel() > 0, "channel_stats: x is empty");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor src = dense(x);
  const int64_t channels = channel_count(x, axis);
  at::Tensor min = at::empty({channels}, x.options()), max = at::empty({channels}, x.options());
  at::Tensor sum = at::empty({channels}, x.options().dtype(at::kDouble)), sumsq = at::empty_like(sum);
  reduce_dispatch<MomentsAcc>(src, layout_of(src, axis), nullptr,
                              EmitMoments{min.data_ptr<float>(), max.data_ptr<float>(), sum.data_ptr<double>(),
                                          sumsq.data_ptr<double>()});
  return {min, max, sum, sumsq};
}

at::Tensor channel_mean_abs_dev(const at::Tensor& x, const at::Tensor& mean, int64_t axis) {
  check_mean_abs_dev_inputs(x, mean, axis);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor src = dense(x);
  const at::Tensor centers = mean.to(at::kDouble).contiguous();
  const int64_t channels = channel_count(x, axis);
  at::Tensor out = at::empty({channels}, x.options().dtype(at::kDouble));
  const double count = static_cast<double>(x.numel()) / static_cast<double>(channels);
  reduce_dispatch<AbsDevAcc>(src, layout_of(src, axis), centers.data_ptr<double>(),
                             EmitMeanAbsDev{out.data_ptr<double>(), count});
  return out;
}

// Codes round to integers k; k - low in [0, num_bins) is counted in its channel's row of `counts`.
template <bool Shared>
__global__ void histogram_kernel(const float* __restrict__ x, int64_t n, int64_t inner, int64_t channels,
                                 int64_t low, int64_t num_bins, unsigned long long* __restrict__ counts) {
  extern __shared__ unsigned int local[];
  const int64_t slots = channels * num_bins;
  if (Shared) {
    for (int64_t s = threadIdx.x; s < slots; s += blockDim.x) local[s] = 0;
    __syncthreads();
  }
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += stride) {
    const float r = rintf(x[i]);
    // also false for NaN; bounds checked in float first so the conversion below is defined
    if (!(r >= static_cast<float>(low) && r <= static_cast<float>(low + num_bins))) continue;
    const int64_t k = static_cast<int64_t>(r) - low;
    if (k >= num_bins) continue;
    const int64_t slot = (channels > 1 ? (i / inner) % channels : 0) * num_bins + k;
    if (Shared) {
      atomicAdd(&local[slot], 1u);
    } else {
      atomicAdd(&counts[slot], 1ull);
    }
  }
  if (Shared) {
    __syncthreads();
    for (int64_t s = threadIdx.x; s < slots; s += blockDim.x) {
      if (local[s]) atomicAdd(&counts[s], static_cast<unsigned long long>(local[s]));
    }
  }
}

at::Tensor code_histogram(const at::Tensor& codes, int64_t low, int64_t num_bins, int64_t axis) {
  check_input(codes, axis, "code_histogram");
  TORCH_CHECK(num_bins > 0, "code_histogram: num_bins must be positive, got ", num_bins);
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor src = dense(codes);
  const Layout lay = layout_of(src, axis);
  const int64_t channels = channel_count(codes, axis);
  at::Tensor out = at::zeros(axis < 0 ? at::IntArrayRef{num_bins} : at::IntArrayRef{channels, num_bins},
                             codes.options().dtype(at::kLong));
  if (lay.numel() == 0) return out;
  const int64_t slots = lay.channels * num_bins;
  const auto grid = static_cast<unsigned>(grid_for(lay.numel()));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto* counts = reinterpret_cast<unsigned long long*>(out.data_ptr<int64_t>());
  if (slots <= kSharedHistogramSlots) {
    histogram_kernel<true><<<grid, kThreads, slots * sizeof(unsigned int), stream>>>(
        src.data_ptr<float>(), lay.numel(), lay.inner, lay.channels, low, num_bins, counts);
  } else {
    histogram_kernel<false><<<grid, kThreads, 0, stream>>>(src.data_ptr<float>(), lay.numel(), lay.inner,
                                                           lay.channels, low, num_bins, counts);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace ptq

TORCH_LIBRARY_IMPL(ptq_kernels, CUDA, m) {
  m.impl("fake_quant", &ptq::QuantizeOps<ptq::CudaQuantize>::fake_quant);
  m.impl("quant_codes", &ptq::QuantizeOps<ptq::CudaQuantize>::quant_codes);
  m.impl("fake_quant_mid_tread", &ptq::QuantizeOps<ptq::CudaQuantize>::fake_quant_mid_tread);
  m.impl("mid_tread_codes", &ptq::QuantizeOps<ptq::CudaQuantize>::mid_tread_codes);
  m.impl("threshold_quant", &ptq::threshold_quant);
  m.impl("code_histogram", &ptq::code_histogram);
  m.impl("channel_stats", &ptq::channel_stats);
  m.impl("channel_mean_abs_dev", &ptq::channel_mean_abs_dev);
}
