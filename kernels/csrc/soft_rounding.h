// AdaRound's soft rounding of one weight and its gradient (host and device), in the float32
// operation order of pytorch_quantizer/maths/soft_rounding.py; see that file for the formulas:
//
//   sig = sigmoid(v),  h = clamp(sig * (zeta - gamma) + gamma, 0, 1),
//   u = floor(w * (1/s)) + h + z,  y = (min(max(u, 0), qmax) - z) * s,
//   penalty = 1 - |2h - 1|^beta.
//
// The gradient repeats what autograd computes through those torch ops, including its conventions
// at the edges: clamp passes the gradient where min <= x <= max, minimum(u, qmax) passes half of it
// where u == qmax, abs' gradient is sign(x) (0 at 0).
#pragma once

#include "quant_math.h"

namespace ptq {

constexpr float kStretch = 1.2f;   // zeta - gamma, zeta = 1.1, gamma = -0.1 (adaround.ZETA, GAMMA)
constexpr float kGamma = -0.1f;

// Params of a weight grid for the soft rounding: {1/s, s, z, qmax}, as Gemmlowp::prepare.
struct SoftRounding {
  float sig, stretched, h, u;
};

PTQ_HD SoftRounding soft_rounding(float w, float v, const Params& p) {
  SoftRounding r;
  r.sig = 1.0f / (1.0f + expf(-v));
  r.stretched = r.sig * kStretch + kGamma;
  r.h = at_most(at_least(r.stretched, 0.0f), 1.0f);
  r.u = floorf(w * p.a) + r.h + p.c;
  return r;
}

PTQ_HD float soft_rounded_value(const SoftRounding& r, const Params& p) {
  return (at_most(at_least(r.u, 0.0f), p.d) - p.c) * p.b;
}

PTQ_HD float rounding_penalty(float h, float beta) { return 1.0f - powf(fabsf(2.0f * h - 1.0f), beta); }

// d loss / d v for d loss / d y = grad_y and d loss / d (sum of penalties) = grad_penalty
// (grad_penalty = 0: no penalty term).
PTQ_HD float soft_rounding_grad(const SoftRounding& r, const Params& p, float grad_y, float grad_penalty,
                                float beta) {
  const float to_codes = grad_y * p.b;
  const float in_range = r.u >= 0.0f ? (r.u < p.d ? to_codes : (r.u == p.d ? to_codes / 2.0f : 0.0f)) : 0.0f;
  float to_h = in_range;
  if (grad_penalty != 0.0f) {
    const float centered = 2.0f * r.h - 1.0f;
    const float magnitude = fabsf(centered);
    const float sign = centered > 0.0f ? 1.0f : (centered < 0.0f ? -1.0f : 0.0f);
    const float to_magnitude = -grad_penalty * (beta * powf(magnitude, beta - 1.0f));
    to_h = to_h + to_magnitude * sign * 2.0f;
  }
  const float to_stretched = (r.stretched >= 0.0f && r.stretched <= 1.0f) ? to_h : 0.0f;
  return to_stretched * kStretch * (1.0f - r.sig) * r.sig;
}

}  // namespace ptq
