// ptq_kernels: fused fake quantization, integer codes, level-set (threshold) quantization, code
// histograms and one-pass channel statistics. This file holds the op schemas and the CPU kernels;
// quant_math.h holds the formulas.
//
// Conventions of every op: x is float32; axis = -1 means per tensor (parameters of one element),
// else parameters are 1-D with one entry per channel of `axis`. Outputs keep x's memory format.
// Stochastic rounding draws u from a counter-based hash of (seed, memory offset of the element).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops_common.h"

namespace ptq {
namespace {

constexpr int64_t kGrain = 1 << 15;         // elements per parallel task
constexpr int64_t kRowMaxInner = 16;        // channel runs shorter than this are handled row by row ...
constexpr int64_t kRowMaxLength = 1 << 13;  // ... when a row ([channels][inner]) has at most this many elements
constexpr int64_t kLanes = 16;  // independent accumulators per channel so that reductions vectorise

// A layout whose per-channel runs are too short to vectorise (channels_last has inner == 1).
bool use_rows(const Layout& lay) {
  return lay.channels > 1 && lay.inner < kRowMaxInner && lay.row() <= kRowMaxLength;
}

// Calls body(j0, m) on pieces [j0, j0 + m) of [0, n). With stochastic rounding a piece never
// crosses a multiple of 2^32 of the RNG counter base + j: the counter's high word is then constant
// inside the piece, which keeps the hash loop in 32-bit lanes (vectorisable).
template <bool S, class Body>
void for_each_piece(int64_t n, int64_t base, const Body& body) {
  if (!S) {
    body(0, n);
    return;
  }
  for (int64_t j0 = 0; j0 < n;) {
    const int64_t m = std::min(n - j0, ((((base + j0) >> 32) + 1) << 32) - (base + j0));
    body(j0, m);
    j0 += m;
  }
}

// The element loops: one parameter set, or one per element (a row). `base` is the memory offset
// of x[0], the RNG counter.
template <class Op, bool S, bool Codes>
void quantize_uniform(const float* __restrict__ x, float* __restrict__ y, int64_t n, Params p, RngKey key,
                      int64_t base) {
  const uint32_t lo = static_cast<uint32_t>(base), hi = static_cast<uint32_t>(static_cast<uint64_t>(base) >> 32);
  for (int64_t j = 0; j < n; ++j) {
    y[j] = quantize_one<Op, S, Codes>(x[j], p, S ? uniform01(key, lo + static_cast<uint32_t>(j), hi) : 0.0f);
  }
}

template <class Op, bool S, bool Codes>
void quantize_varying(const float* __restrict__ x, float* __restrict__ y, int64_t n, const float* __restrict__ a,
                      const float* __restrict__ b, const float* __restrict__ c, const float* __restrict__ d,
                      RngKey key, int64_t base) {
  const uint32_t lo = static_cast<uint32_t>(base), hi = static_cast<uint32_t>(static_cast<uint64_t>(base) >> 32);
  for (int64_t j = 0; j < n; ++j) {
    y[j] = quantize_one<Op, S, Codes>(x[j], Params{a[j], b[j], c[j], d[j]},
                                      S ? uniform01(key, lo + static_cast<uint32_t>(j), hi) : 0.0f);
  }
}

// Per-element parameters of one row, as arrays so that the row loop vectorises.
struct RowParams {
  std::vector<float> a, b, c, d;
  RowParams(const std::vector<Params>& params, const Layout& lay)
      : a(lay.row()), b(lay.row()), c(lay.row()), d(lay.row()) {
    for (int64_t j = 0; j < lay.row(); ++j) {
      const Params& p = params[j / lay.inner];
      a[j] = p.a, b[j] = p.b, c[j] = p.c, d[j] = p.d;
    }
  }
};

template <class Op, bool S, bool Codes>
void quantize_layout(const float* x, float* y, const Layout& lay, const std::vector<Params>& params, RngKey key) {
  if (use_rows(lay)) {
    const RowParams rp(params, lay);
    const int64_t row = lay.row();
    at::parallel_for(0, lay.outer, std::max<int64_t>(1, kGrain / row), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = r * row;
        for_each_piece<S>(row, base, [&](int64_t j0, int64_t m) {
          quantize_varying<Op, S, Codes>(x + base + j0, y + base + j0, m, rp.a.data() + j0, rp.b.data() + j0,
                                         rp.c.data() + j0, rp.d.data() + j0, key, base + j0);
        });
      }
    });
    return;
  }
  at::parallel_for(0, lay.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t block = i / lay.inner;
      const int64_t stop = std::min(end, (block + 1) * lay.inner);
      const Params p = params[block % lay.channels];
      for_each_piece<S>(stop - i, i, [&](int64_t j0, int64_t m) {
        quantize_uniform<Op, S, Codes>(x + i + j0, y + i + j0, m, p, key, i + j0);
      });
      i = stop;
    }
  });
}

template <class Op>
at::Tensor quantize_cpu(const char* op, const at::Tensor& x, const at::Tensor& p0, const at::Tensor& p1,
                        const at::Tensor& p2, const char* const (&names)[3], int64_t axis, int64_t seed,
                        bool stochastic, bool codes) {
  const auto [c0, c1, c2] = checked_params(op, x, p0, p1, p2, names, axis);
  const float *v0 = c0.data_ptr<float>(), *v1 = c1.data_ptr<float>(), *v2 = c2.data_ptr<float>();
  std::vector<Params> params(c0.numel());
  for (size_t c = 0; c < params.size(); ++c) params[c] = Op::prepare(v0[c], v1[c], v2[c]);
  const DensePair dp = dense_pair(x);
  const Layout lay = layout_of(dp.src, axis);
  const float* src = dp.src.data_ptr<float>();
  float* out = dp.out.data_ptr<float>();
  const RngKey key = rng_key(seed);
  const auto run = [&](auto s, auto k) {
    quantize_layout<Op, decltype(s)::value, decltype(k)::value>(src, out, lay, params, key);
  };
  with_static_flags(stochastic, codes, run);
  return dp.out;
}

struct CpuQuantize {
  template <class Op, class... Args>
  static at::Tensor run(Args&&... args) { return quantize_cpu<Op>(std::forward<Args>(args)...); }
};

// Level-set quantization (threshold_quantize_one) of n elements with scales s[j], or one scale
// (s_step = 0): the row and run loops of threshold_quant.
void threshold_elements(const float* __restrict__ x, float* __restrict__ y, int64_t n, const float* s, int64_t s_step,
                        const float* t, int32_t num_thresholds, const float* v) {
  for (int64_t j = 0; j < n; ++j) y[j] = threshold_quantize_one(x[j], s[j * s_step], t, num_thresholds, v);
}

at::Tensor threshold_quant(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& thresholds,
                           const at::Tensor& values, int64_t axis) {
  const LevelSet set = checked_level_set(x, scale, thresholds, values, axis);
  const DensePair dp = dense_pair(x);
  const Layout lay = layout_of(dp.src, axis);
  const float* src = dp.src.data_ptr<float>();
  float* out = dp.out.data_ptr<float>();
  const float* s = set.scale.data_ptr<float>();
  const float *t = set.thresholds.data_ptr<float>(), *v = set.values.data_ptr<float>();
  const auto num_thresholds = static_cast<int32_t>(set.thresholds.numel());
  if (use_rows(lay)) {
    const int64_t row = lay.row();
    std::vector<float> row_scale(row);
    for (int64_t j = 0; j < row; ++j) row_scale[j] = s[j / lay.inner];
    at::parallel_for(0, lay.outer, std::max<int64_t>(1, kGrain / row), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        threshold_elements(src + r * row, out + r * row, row, row_scale.data(), 1, t, num_thresholds, v);
      }
    });
    return dp.out;
  }
  at::parallel_for(0, lay.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t block = i / lay.inner;
      const int64_t stop = std::min(end, (block + 1) * lay.inner);
      threshold_elements(src + i, out + i, stop - i, s + block % lay.channels, 0, t, num_thresholds, v);
      i = stop;
    }
  });
  return dp.out;
}

// Accumulators at n positions, one array per field so that the update loop vectorises.
struct MomentsLanes {
  using Acc = MomentsAcc;
  std::vector<float> min, max;
  std::vector<double> sum, sumsq;
  explicit MomentsLanes(int64_t n) : min(n, INFINITY), max(n, -INFINITY), sum(n, 0.0), sumsq(n, 0.0) {}
  // position pos + j accumulates x[j] (around centre centers[j]) for j < n
  void add(const float* __restrict__ x, int64_t n, int64_t pos, const double* /*centers*/) {
    float* __restrict__ lo = min.data() + pos;
    float* __restrict__ hi = max.data() + pos;
    double* __restrict__ s = sum.data() + pos;
    double* __restrict__ ss = sumsq.data() + pos;
    for (int64_t j = 0; j < n; ++j) {
      const float v = x[j];
      lo[j] = v < lo[j] ? v : lo[j];
      hi[j] = v > hi[j] ? v : hi[j];
      s[j] += static_cast<double>(v);
      ss[j] += static_cast<double>(v) * static_cast<double>(v);
    }
  }
  // A channel run: x[j] accumulates into lane pos + j % kLanes, the kLanes lanes held in registers.
  void add_run(const float* __restrict__ x, int64_t n, int64_t pos, const double* /*centers*/) {
    float lo[kLanes], hi[kLanes];
    double s[kLanes], ss[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) {
      lo[k] = min[pos + k], hi[k] = max[pos + k], s[k] = sum[pos + k], ss[k] = sumsq[pos + k];
    }
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) {
        const float v = x[j + k];
        lo[k] = v < lo[k] ? v : lo[k];
        hi[k] = v > hi[k] ? v : hi[k];
        s[k] += static_cast<double>(v);
        ss[k] += static_cast<double>(v) * static_cast<double>(v);
      }
    }
    for (int64_t k = 0; k < kLanes; ++k) {
      min[pos + k] = lo[k], max[pos + k] = hi[k], sum[pos + k] = s[k], sumsq[pos + k] = ss[k];
    }
    add(x + j, n - j, pos, nullptr);
  }
  Acc at(int64_t q) const { return {min[q], max[q], sum[q], sumsq[q]}; }
};

struct AbsDevLanes {
  using Acc = AbsDevAcc;
  std::vector<double> sum;
  explicit AbsDevLanes(int64_t n) : sum(n, 0.0) {}
  void add(const float* __restrict__ x, int64_t n, int64_t pos, const double* __restrict__ centers) {
    double* __restrict__ s = sum.data() + pos;
    for (int64_t j = 0; j < n; ++j) s[j] += std::fabs(static_cast<double>(x[j]) - centers[j]);
  }
  void add_run(const float* __restrict__ x, int64_t n, int64_t pos, const double* __restrict__ centers) {
    double s[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) s[k] = sum[pos + k];
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) s[k] += std::fabs(static_cast<double>(x[j + k]) - centers[k]);
    }
    for (int64_t k = 0; k < kLanes; ++k) sum[pos + k] = s[k];
    add(x + j, n - j, pos, centers);
  }
  Acc at(int64_t q) const { return {sum[q]}; }
};

// Work is cut into a number of partitions fixed by the sizes alone, and partial results are
// combined in partition order, so reductions do not depend on the thread count.
int64_t partition_count(int64_t n, int64_t channels) {
  const int64_t parts = std::clamp<int64_t>(n / kGrain, 1, 64);
  return std::clamp<int64_t>((int64_t{1} << 22) / std::max<int64_t>(channels, 1), 1, parts);
}

// Per-channel reduction of a dense tensor; centers (one per channel) may be null. A partition
// accumulates into lanes: one per row element (row layouts), or kLanes per channel run (element j
// of a run goes to lane j % kLanes), folded into its channels' partial results at its end.
template <class Lanes>
std::vector<typename Lanes::Acc> reduce_channels(const float* x, const Layout& lay, const double* centers) {
  using Acc = typename Lanes::Acc;
  const int64_t channels = lay.channels, n = lay.numel(), row = lay.row();
  const bool rows = use_rows(lay);
  // the centre of each element of a row, or kLanes copies of each channel's centre
  const int64_t per_channel = rows ? lay.inner : kLanes;
  std::vector<double> spread(channels * per_channel, 0.0);
  for (int64_t q = 0; centers && q < channels * per_channel; ++q) spread[q] = centers[q / per_channel];
  const int64_t parts = partition_count(n, channels);
  std::vector<Acc> partial(parts * channels, Acc::identity());
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      Acc* out = partial.data() + p * channels;
      if (rows) {
        Lanes lanes(row);
        for (int64_t r = lay.outer * p / parts; r < lay.outer * (p + 1) / parts; ++r) {
          lanes.add(x + r * row, row, 0, spread.data());
        }
        for (int64_t q = 0; q < row; ++q) out[q / lay.inner].merge(lanes.at(q));
        continue;
      }
      const int64_t begin = n * p / parts, end = n * (p + 1) / parts;
      if (begin == end) continue;
      // The partition spans runs (blocks) first..last. Lane slot k serves block first + k (fewer
      // blocks than channels: all distinct), or channel k when every channel is spanned.
      const int64_t first = begin / lay.inner, spanned = (end - 1) / lay.inner - first + 1;
      const bool every = spanned >= channels;
      const int64_t slots = every ? channels : spanned;
      Lanes lanes(slots * kLanes);
      for (int64_t i = begin; i < end;) {
        const int64_t block = i / lay.inner;
        const int64_t stop = std::min(end, (block + 1) * lay.inner);
        const int64_t c = block % channels, pos = (every ? c : block - first) * kLanes;
        const double* run_centers = spread.data() + c * kLanes;
        if (stop - i >= 4 * kLanes) {
          lanes.add_run(x + i, stop - i, pos, run_centers);
        } else {  // too short to pay for moving the lanes into registers and back
          for (int64_t j = i; j < stop; j += kLanes) lanes.add(x + j, std::min(kLanes, stop - j), pos, run_centers);
        }
        i = stop;
      }
      for (int64_t k = 0; k < slots * kLanes; ++k) {
        out[every ? k / kLanes : (first + k / kLanes) % channels].merge(lanes.at(k));
      }
    }
  });
  std::vector<Acc> result(channels, Acc::identity());
  for (int64_t p = 0; p < parts; ++p) {
    for (int64_t c = 0; c < channels; ++c) result[c].merge(partial[p * channels + c]);
  }
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> channel_stats(const at::Tensor& x, int64_t axis) {
  check_input(x, axis, "channel_stats");
  TORCH_CHECK(x.numel() > 0, "channel_stats: x is empty");
  const at::Tensor src = dense(x);
  const std::vector<MomentsAcc> acc = reduce_channels<MomentsLanes>(src.data_ptr<float>(), layout_of(src, axis), nullptr);
  const int64_t channels = channel_count(x, axis);
  at::Tensor min = at::empty({channels}, x.options()), max = at::empty({channels}, x.options());
  at::Tensor sum = at::empty({channels}, x.options().dtype(at::kDouble)), sumsq = at::empty_like(sum);
  for (int64_t c = 0; c < channels; ++c) {
    const MomentsAcc a = acc[acc.size() == 1 ? 0 : c].finished();
    min.data_ptr<float>()[c] = a.min, max.data_ptr<float>()[c] = a.max;
    sum.data_ptr<double>()[c] = a.sum, sumsq.data_ptr<double>()[c] = a.sumsq;
  }
  return {min, max, sum, sumsq};
}

at::Tensor channel_mean_abs_dev(const at::Tensor& x, const at::Tensor& mean, int64_t axis) {
  check_mean_abs_dev_inputs(x, mean, axis);
  const at::Tensor src = dense(x);
  const at::Tensor centers = mean.to(at::kDouble).contiguous();
  const std::vector<AbsDevAcc> acc =
      reduce_channels<AbsDevLanes>(src.data_ptr<float>(), layout_of(src, axis), centers.data_ptr<double>());
  const int64_t channels = channel_count(x, axis);
  const double count = static_cast<double>(x.numel()) / static_cast<double>(channels);
  at::Tensor out = at::empty({channels}, x.options().dtype(at::kDouble));
  for (int64_t c = 0; c < channels; ++c) out.data_ptr<double>()[c] = acc[acc.size() == 1 ? 0 : c].sum / count;
  return out;
}

at::Tensor code_histogram(const at::Tensor& codes, int64_t low, int64_t num_bins, int64_t axis) {
  check_input(codes, axis, "code_histogram");
  TORCH_CHECK(num_bins > 0, "code_histogram: num_bins must be positive, got ", num_bins);
  const at::Tensor src = dense(codes);
  const Layout lay = layout_of(src, axis);
  const int64_t channels = channel_count(codes, axis), n = lay.numel(), slots = lay.channels * num_bins;
  const int64_t parts = partition_count(n, slots);
  const float* x = src.data_ptr<float>();
  std::vector<int64_t> partial(parts * slots, 0);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      int64_t* hist = partial.data() + p * slots;
      for (int64_t i = n * p / parts, end = n * (p + 1) / parts; i < end; ++i) {
        const float r = round_even(x[i]);
        // also false for NaN; bounds checked in float first so the conversion below is defined
        if (!(r >= static_cast<float>(low) && r <= static_cast<float>(low + num_bins))) continue;
        const int64_t k = static_cast<int64_t>(r) - low;
        if (k < num_bins) ++hist[(i / lay.inner) % lay.channels * num_bins + k];
      }
    }
  });
  at::Tensor out = at::zeros(axis < 0 ? at::IntArrayRef{num_bins} : at::IntArrayRef{channels, num_bins},
                             codes.options().dtype(at::kLong));
  int64_t* counts = out.data_ptr<int64_t>();
  for (int64_t p = 0; p < parts; ++p) {
    for (int64_t s = 0; s < slots; ++s) counts[s] += partial[p * slots + s];
  }
  return out;
}

}  // namespace
}  // namespace ptq

TORCH_LIBRARY(ptq_kernels, m) {
  m.set_python_module("kernels.fake");
  m.def("fake_quant(Tensor x, Tensor scale, Tensor zero_point, Tensor qmax, int axis, int seed, bool stochastic) -> Tensor");
  m.def("quant_codes(Tensor x, Tensor scale, Tensor zero_point, Tensor qmax, int axis, int seed, bool stochastic) -> Tensor");
  m.def("fake_quant_mid_tread(Tensor x, Tensor center, Tensor alpha, Tensor bins, int axis, int seed, bool stochastic) -> Tensor");
  m.def("mid_tread_codes(Tensor x, Tensor center, Tensor alpha, Tensor bins, int axis, int seed, bool stochastic) -> Tensor");
  m.def("threshold_quant(Tensor x, Tensor scale, Tensor thresholds, Tensor values, int axis) -> Tensor");
  m.def("code_histogram(Tensor codes, int low, int num_bins, int axis) -> Tensor");
  m.def("channel_stats(Tensor x, int axis) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("channel_mean_abs_dev(Tensor x, Tensor mean, int axis) -> Tensor");
}

TORCH_LIBRARY_IMPL(ptq_kernels, CPU, m) {
  m.impl("fake_quant", &ptq::QuantizeOps<ptq::CpuQuantize>::fake_quant);
  m.impl("quant_codes", &ptq::QuantizeOps<ptq::CpuQuantize>::quant_codes);
  m.impl("fake_quant_mid_tread", &ptq::QuantizeOps<ptq::CpuQuantize>::fake_quant_mid_tread);
  m.impl("mid_tread_codes", &ptq::QuantizeOps<ptq::CpuQuantize>::mid_tread_codes);
  m.impl("threshold_quant", &ptq::threshold_quant);
  m.impl("code_histogram", &ptq::code_histogram);
  m.impl("channel_stats", &ptq::channel_stats);
  m.impl("channel_mean_abs_dev", &ptq::channel_mean_abs_dev);
}
