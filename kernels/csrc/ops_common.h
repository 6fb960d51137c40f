// Host-side helpers shared by the CPU and CUDA op implementations: input checks and memory layout.
#pragma once

#include <ATen/ATen.h>

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

inline at::Tensor dense(const at::Tensor& x) { return x.is_non_overlapping_and_dense() ? x : x.contiguous(); }

}  // namespace ptq
