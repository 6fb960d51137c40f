// Host-side helpers shared by the CPU and CUDA op implementations: input checks and memory layout.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <type_traits>
#include <utility>

#include "quant_math.h"

namespace ptq {

// A dense tensor seen in memory order as [outer][channels][inner]: element at memory offset i
// belongs to channel (i / inner) % channels. This holds for any non-overlapping dense layout
// (contiguous, channels_last, ...) with inner = stride(axis); per tensor it is [1][1][numel].
struct Layout {
  int64_t outer, channels, inner;
  int64_t numel() const { return outer * channels * inner; }
  int64_t row() const { return channels * inner; }
};

inline Layout layout_of(const at::Tensor& dense, int64_t axis) {
  const int64_t n = dense.numel();
  if (axis < 0 || dense.size(axis) <= 1 || n == 0) {
    return {1, 1, n};
  }
  const int64_t channels = dense.size(axis);
  const int64_t inner = dense.stride(axis);
  return {n / (channels * inner), channels, inner};
}

inline int64_t channel_count(const at::Tensor& x, int64_t axis) { return axis < 0 ? 1 : x.size(axis); }

inline void check_input(const at::Tensor& x, int64_t axis, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK(axis >= -1 && axis < x.dim(), op, ": axis ", axis, " is out of range for a ", x.dim(),
              "-d tensor (use -1 for per tensor)");
}

inline void check_channel_vector(const at::Tensor& p, const char* name, const at::Tensor& x, int64_t axis,
                                 const char* op) {
  TORCH_CHECK(p.device() == x.device(), op, ": ", name, " is on ", p.device(), " but x is on ", x.device());
  TORCH_CHECK(p.dim() <= 1, op, ": ", name, " must be 0-d or 1-d, got ", p.dim(), " dims");
  if (axis < 0) {
    TORCH_CHECK(p.numel() == 1, op, ": ", name, " has ", p.numel(), " elements; per tensor (axis -1) needs 1");
  } else {
    TORCH_CHECK(p.numel() == x.size(axis), op, ": ", name, " has ", p.numel(), " elements but axis ", axis,
                " has ", x.size(axis), " channels");
  }
}

inline void check_float_vector(const at::Tensor& p, const char* name, const at::Tensor& x, int64_t axis,
                               const char* op) {
  TORCH_CHECK(p.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", p.scalar_type());
  check_channel_vector(p, name, x, axis, op);
}

// Output with x's strides (at::empty_like keeps a dense layout such as channels_last) and a source
// laid out like it: x itself when x is dense, else a dense copy.
struct DensePair {
  at::Tensor src, out;
};

inline DensePair dense_pair(const at::Tensor& x) {
  at::Tensor out = at::empty_like(x);
  at::Tensor src = x.strides() == out.strides() ? x : at::empty_like(out).copy_(x);
  return {src, out};
}

// qdrop_select's operands: the output laid out like x, and x and q in that layout (copies where
// they are not), so that one memory offset addresses the same element of all three.
struct SelectPair {
  at::Tensor src, values, out;
};

inline SelectPair checked_select_pair(const at::Tensor& x, const at::Tensor& q, double p) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && q.scalar_type() == at::kFloat,
              "qdrop_select: x and q must be float32, got ", x.scalar_type(), " and ", q.scalar_type());
  TORCH_CHECK(x.sizes() == q.sizes(), "qdrop_select: q has shape ", q.sizes(), " but x has ", x.sizes());
  TORCH_CHECK(x.device() == q.device(), "qdrop_select: q is on ", q.device(), " but x is on ", x.device());
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "qdrop_select: p = ", p, " is not a probability in [0, 1]");
  const DensePair dp = dense_pair(x);
  at::Tensor values = q.strides() == dp.out.strides() ? q : at::empty_like(dp.out).copy_(q);
  return {dp.src, values, dp.out};
}

inline at::Tensor dense(const at::Tensor& x) { return x.is_non_overlapping_and_dense() ? x : x.contiguous(); }

// t as a tensor of like's shape and dtype laid out as like is (a copy where it is not).
inline at::Tensor laid_out_like(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == like.sizes(), op, ": ", name, " has shape ", t.sizes(), " but w has ", like.sizes());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but w is on ", like.device());
  return t.strides() == like.strides() ? t : at::empty_like(like).copy_(t);
}

// soft_round's operands: the weight dense, the logits laid out like it, the grid's parameters
// (one per channel of axis, or one) contiguous.
struct SoftRoundOperands {
  at::Tensor weight, logits, scale, zero_point, qmax;
};

inline SoftRoundOperands checked_soft_round_operands(const char* op, const at::Tensor& w, const at::Tensor& v,
                                                     const at::Tensor& scale, const at::Tensor& zero_point,
                                                     const at::Tensor& qmax, int64_t axis) {
  check_input(w, axis, op);
  const at::Tensor weight = dense(w);
  SoftRoundOperands operands{weight, laid_out_like(v, weight, op, "v"), scale.contiguous(), zero_point.contiguous(),
                             qmax.contiguous()};
  check_float_vector(operands.scale, "scale", w, axis, op);
  check_float_vector(operands.zero_point, "zero_point", w, axis, op);
  check_float_vector(operands.qmax, "qmax", w, axis, op);
  return operands;
}

// A 0-d (or one-element) float32 tensor on w's device.
inline at::Tensor checked_scalar(const at::Tensor& t, const at::Tensor& w, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1, op, ": ", name,
              " must be a float32 tensor of one element, got ", t.scalar_type(), " with ", t.numel());
  TORCH_CHECK(t.device() == w.device(), op, ": ", name, " is on ", t.device(), " but w is on ", w.device());
  return t.reshape({}).contiguous();
}

// channel_mean_abs_dev's inputs: float32 x (not empty) and one floating-point mean per channel.
inline void check_mean_abs_dev_inputs(const at::Tensor& x, const at::Tensor& mean, int64_t axis) {
  check_input(x, axis, "channel_mean_abs_dev");
  TORCH_CHECK(mean.is_floating_point(), "channel_mean_abs_dev: mean must be floating point, got ", mean.scalar_type());
  check_channel_vector(mean, "mean", x, axis, "channel_mean_abs_dev");
  TORCH_CHECK(x.numel() > 0, "channel_mean_abs_dev: x is empty");
}

// threshold_quant's tables: K levels and K - 1 thresholds, shared by all channels.
constexpr int64_t kMaxLevels = int64_t{1} << 16;

struct LevelSet {
  at::Tensor scale, thresholds, values;  // contiguous, on x's device
};

inline void check_table(const at::Tensor& p, const char* name, const at::Tensor& x) {
  TORCH_CHECK(p.scalar_type() == at::kFloat, "threshold_quant: ", name, " must be float32, got ", p.scalar_type());
  TORCH_CHECK(p.device() == x.device(), "threshold_quant: ", name, " is on ", p.device(), " but x is on ", x.device());
  TORCH_CHECK(p.dim() == 1, "threshold_quant: ", name, " must be 1-d, got ", p.dim(), " dims");
}

// threshold_quant's inputs checked and made contiguous. Sortedness is checked on a host copy of the
// thresholds (on CUDA, one small device-to-host copy: the op's only synchronisation).
inline LevelSet checked_level_set(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& thresholds,
                                  const at::Tensor& values, int64_t axis) {
  const char* op = "threshold_quant";
  check_input(x, axis, op);
  check_float_vector(scale, "scale", x, axis, op);
  check_table(thresholds, "thresholds", x);
  check_table(values, "values", x);
  TORCH_CHECK(values.numel() == thresholds.numel() + 1, op, ": values has ", values.numel(),
              " elements and thresholds ", thresholds.numel(), "; K levels need K - 1 thresholds");
  TORCH_CHECK(values.numel() <= kMaxLevels, op, ": ", values.numel(), " levels; at most ", kMaxLevels,
              " are supported");
  LevelSet set{scale.contiguous(), thresholds.contiguous(), values.contiguous()};
  const at::Tensor host = set.thresholds.cpu();
  const float* t = host.data_ptr<float>();
  for (int64_t j = 0; j < host.numel(); ++j) {
    TORCH_CHECK(t[j] == t[j], op, ": thresholds[", j, "] is NaN");
    TORCH_CHECK(j == 0 || t[j - 1] <= t[j], op, ": thresholds must be sorted ascending, but thresholds[", j,
                "] = ", t[j], " < thresholds[", j - 1, "] = ", t[j - 1]);
  }
  return set;
}

// The names of the three per-channel parameter vectors of each quantizer, for error messages.
inline constexpr const char* kGemmlowpNames[3] = {"scale", "zero_point", "qmax"};
inline constexpr const char* kMidTreadNames[3] = {"center", "alpha", "bins"};

// check_input plus the three per-channel parameter vectors, checked against x and made contiguous.
inline std::array<at::Tensor, 3> checked_params(const char* op, const at::Tensor& x, const at::Tensor& p0,
                                                const at::Tensor& p1, const at::Tensor& p2,
                                                const char* const (&names)[3], int64_t axis) {
  check_input(x, axis, op);
  std::array<at::Tensor, 3> params{p0.contiguous(), p1.contiguous(), p2.contiguous()};
  for (size_t i = 0; i < params.size(); ++i) check_float_vector(params[i], names[i], x, axis, op);
  return params;
}

// run(s, k) with the runtime flags as std::bool_constant arguments, so that each combination of
// stochastic rounding and code output is a separately compiled kernel.
template <class Run>
void with_static_flags(bool stochastic, bool codes, const Run& run) {
  if (stochastic) {
    codes ? run(std::true_type{}, std::true_type{}) : run(std::true_type{}, std::false_type{});
  } else {
    codes ? run(std::false_type{}, std::true_type{}) : run(std::false_type{}, std::false_type{});
  }
}

// The four quantize ops of one device around Device::template run<Op>(op, x, p0, p1, p2, names, axis,
// seed, stochastic, codes), registered with TORCH_LIBRARY_IMPL by each device's source file.
template <class Device>
struct QuantizeOps {
  static at::Tensor fake_quant(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                               const at::Tensor& qmax, int64_t axis, int64_t seed, bool stochastic) {
    return Device::template run<Gemmlowp>("fake_quant", x, scale, zero_point, qmax, kGemmlowpNames, axis, seed,
                                          stochastic, false);
  }
  static at::Tensor quant_codes(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                const at::Tensor& qmax, int64_t axis, int64_t seed, bool stochastic) {
    return Device::template run<Gemmlowp>("quant_codes", x, scale, zero_point, qmax, kGemmlowpNames, axis, seed,
                                          stochastic, true);
  }
  static at::Tensor fake_quant_mid_tread(const at::Tensor& x, const at::Tensor& center, const at::Tensor& alpha,
                                         const at::Tensor& bins, int64_t axis, int64_t seed, bool stochastic) {
    return Device::template run<MidTread>("fake_quant_mid_tread", x, center, alpha, bins, kMidTreadNames, axis,
                                          seed, stochastic, false);
  }
  static at::Tensor mid_tread_codes(const at::Tensor& x, const at::Tensor& center, const at::Tensor& alpha,
                                    const at::Tensor& bins, int64_t axis, int64_t seed, bool stochastic) {
    return Device::template run<MidTread>("mid_tread_codes", x, center, alpha, bins, kMidTreadNames, axis, seed,
                                          stochastic, true);
  }
};

}  // namespace ptq
