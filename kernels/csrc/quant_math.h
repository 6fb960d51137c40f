// Per-element quantization maths shared by the CPU and CUDA kernels (host and device).
//
// Every formula repeats the float32 operation order of pytorch_quantizer/primitives.py so that
// deterministic results are bit-identical to the reference. Both builds disable FMA contraction
// (-ffp-contract=off, nvcc --fmad=false): c + q * step must round the product first, as PyTorch does.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define PTQ_HD __host__ __device__ __forceinline__
#else
#define PTQ_HD inline
#endif

namespace ptq {

// Four per-channel constants, derived once per channel by Op::prepare (16-byte aligned: one load on GPU).
struct alignas(16) Params {
  float a, b, c, d;
};

// Clamps in which a NaN q stays NaN, as in torch.clamp / minimum / maximum (one maxps / minps each).
// On a tie of -0 and +0 they keep q; torch's own choice there depends on the element's position
// (vectorised body or scalar tail), so the sign of a zero code is the one thing not matched bit for bit.
PTQ_HD float at_least(float q, float lo) { return lo > q ? lo : q; }
PTQ_HD float at_most(float q, float hi) { return hi < q ? hi : q; }

// Round to nearest, ties to even (torch.round).
PTQ_HD float round_even(float v) {
#ifdef __CUDA_ARCH__
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

// Counter-based RNG: two lowbias32 rounds of (element index, 64-bit key from the seed).
struct RngKey {
  uint32_t lo, hi;
};

inline RngKey rng_key(int64_t seed) {  // splitmix64 of the seed
  uint64_t z = static_cast<uint64_t>(seed) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return {static_cast<uint32_t>(z), static_cast<uint32_t>(z >> 32)};
}

PTQ_HD uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// u ~ U[0, 1) on a 2^-24 grid (exact in float32) for the element at memory offset hi * 2^32 + lo.
PTQ_HD float uniform01(RngKey key, uint32_t lo, uint32_t hi) {
  uint32_t h = lowbias32(lo ^ key.lo);
  h = lowbias32(h ^ hi ^ key.hi);
  return static_cast<float>(static_cast<int32_t>(h >> 8)) * 5.9604644775390625e-8f;
}

// QDrop: an element keeps its float value x with probability p (u ~ U[0, 1)), else takes q.
PTQ_HD float qdrop_pick(float x, float q, float u, float p) { return u < p ? x : q; }

// Round v, or floor(v + u) (stochastic rounding: E[floor(v + u)] = v).
template <bool Stochastic>
PTQ_HD float round_value(float v, float u) {
  return Stochastic ? floorf(v + u) : round_even(v);
}

// GEMMLOWP: Params = {1/s, s, z, qmax};
//   q = min(max(round(x * (1/s)) + z, 0), qmax),  x_hat = (q - z) * s.
struct Gemmlowp {
  static PTQ_HD Params prepare(float scale, float zero_point, float qmax) {
    return {1.0f / scale, scale, zero_point, qmax};
  }
  template <bool Stochastic>
  static PTQ_HD float code(float x, const Params& p, float u) {
    const float q = round_value<Stochastic>(x * p.a, u) + p.c;
    return at_most(at_least(q, 0.0f), p.d);
  }
  static PTQ_HD float value(float q, const Params& p) { return (q - p.c) * p.b; }
};

// Mid-tread with B bins around centre c, clipping value alpha: Params = {c, step, K, -K};
//   K = max(floor((B - 1) / 2), 0), step = alpha / max(K, 1) if K > 0 and alpha > 0 else 1,
//   q = max(min(round((x - c) / step), K), -K),  x_hat = c + q * step.
struct MidTread {
  static PTQ_HD Params prepare(float center, float alpha, float bins) {
    const float half_levels = at_least(floorf((bins - 1.0f) / 2.0f), 0.0f);
    const float step = (half_levels > 0.0f && alpha > 0.0f) ? alpha / at_least(half_levels, 1.0f) : 1.0f;
    return {center, step, half_levels, -half_levels};
  }
  template <bool Stochastic>
  static PTQ_HD float code(float x, const Params& p, float u) {
    const float q = round_value<Stochastic>((x - p.a) / p.b, u);
    return at_least(at_most(q, p.c), p.d);
  }
  static PTQ_HD float value(float q, const Params& p) { return p.a + q * p.b; }
};

template <class Op, bool Stochastic, bool Codes>
PTQ_HD float quantize_one(float x, const Params& p, float u) {
  const float q = Op::template code<Stochastic>(x, p, u);
  return Codes ? q : Op::value(q, p);
}

// One-pass moments of a channel: min, max, sum and sum of squares (in double). min / max take one
// minps / maxps each and skip NaN; a NaN element does make sumsq NaN (squares are never negative,
// so only a NaN can), and finished() then reports NaN min / max, as torch.amin / amax do.
struct MomentsAcc {
  float min, max;
  double sum, sumsq;
  static PTQ_HD MomentsAcc identity() { return {INFINITY, -INFINITY, 0.0, 0.0}; }
  PTQ_HD void add(float v, double /*center*/) {
    min = v < min ? v : min;
    max = v > max ? v : max;
    sum += static_cast<double>(v);
    sumsq += static_cast<double>(v) * static_cast<double>(v);
  }
  PTQ_HD void merge(const MomentsAcc& o) {
    min = o.min < min ? o.min : min;
    max = o.max > max ? o.max : max;
    sum += o.sum;
    sumsq += o.sumsq;
  }
  PTQ_HD MomentsAcc finished() const {
    const bool nan = sumsq != sumsq;
    return {nan ? NAN : min, nan ? NAN : max, sum, sumsq};
  }
};

// Sum of |x - centre| of a channel in double (the centre is the channel mean).
struct AbsDevAcc {
  double sum;
  static PTQ_HD AbsDevAcc identity() { return {0.0}; }
  PTQ_HD void add(float v, double center) { sum += fabs(static_cast<double>(v) - center); }
  PTQ_HD void merge(const AbsDevAcc& o) { sum += o.sum; }
};

// Level-set (non-uniform) quantization with K levels v[0..K-1] and K - 1 sorted thresholds t:
//   u = x / s (a true division), k = #{j : t_j <= u} (binary search; ties go up),
//   x_hat = s * v[k];  NaN u (NaN x or s) gives u, s == 0 gives 0 (a NaN x stays x).
// count_at_most is std::upper_bound's index: the number of t_j with u >= t_j.
PTQ_HD int32_t count_at_most(float u, const float* t, int32_t n) {
  int32_t first = 0;
  while (n > 0) {
    const int32_t half = n / 2;
    if (u >= t[first + half]) {
      first += half + 1;
      n -= half + 1;
    } else {
      n = half;
    }
  }
  return first;
}

PTQ_HD float threshold_quantize_one(float x, float s, const float* t, int32_t num_thresholds, const float* v) {
  if (s == 0.0f) return x != x ? x : 0.0f;
  const float u = x / s;
  if (u != u) return u;
  return s * v[count_at_most(u, t, num_thresholds)];
}

}  // namespace ptq
