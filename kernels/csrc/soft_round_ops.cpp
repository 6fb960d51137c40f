// ptq_kernels::soft_round and soft_round_backward: AdaRound's soft-rounded weight, the sum of its
// rounding penalties and the gradient with respect to the logits, each in one pass over the
// weights (soft_rounding.h holds the per-element maths). Schemas and CPU kernels here; CUDA
// kernels in soft_round_cuda.cu.
//
//   soft_round(w, v, scale, zero_point, qmax, axis, beta) -> (y, penalty)
//     y as w; penalty: float32 0-d, sum of 1 - |2h - 1|^beta (accumulated in double), 0 if beta <= 0
//   soft_round_backward(grad_y, grad_penalty, w, v, scale, zero_point, qmax, axis, beta) -> grad_v
//     grad_penalty: 0-d; its term is left out where beta <= 0
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops_common.h"
#include "soft_rounding.h"

namespace ptq {
namespace {

constexpr int64_t kGrain = 1 << 14;

struct Prepared {
  SoftRoundOperands operands;
  std::vector<Params> params;
  Layout layout;
};

Prepared prepare(const char* op, const at::Tensor& w, const at::Tensor& v, const at::Tensor& scale,
                 const at::Tensor& zero_point, const at::Tensor& qmax, int64_t axis) {
  Prepared prepared{checked_soft_round_operands(op, w, v, scale, zero_point, qmax, axis), {}, {}};
  const SoftRoundOperands& o = prepared.operands;
  const float *s = o.scale.data_ptr<float>(), *z = o.zero_point.data_ptr<float>(), *top = o.qmax.data_ptr<float>();
  for (int64_t c = 0; c < o.scale.numel(); ++c) prepared.params.push_back(Gemmlowp::prepare(s[c], z[c], top[c]));
  prepared.layout = layout_of(o.weight, axis);
  return prepared;
}

const Params& params_at(const Prepared& prepared, int64_t i) {
  const Layout& lay = prepared.layout;
  return prepared.params[lay.channels > 1 ? (i / lay.inner) % lay.channels : 0];
}

std::tuple<at::Tensor, at::Tensor> soft_round(const at::Tensor& w, const at::Tensor& v, const at::Tensor& scale,
                                              const at::Tensor& zero_point, const at::Tensor& qmax, int64_t axis,
                                              double beta) {
  const Prepared prepared = prepare("soft_round", w, v, scale, zero_point, qmax, axis);
  const at::Tensor& weight = prepared.operands.weight;
  at::Tensor out = at::empty_like(weight);
  const float *src = weight.data_ptr<float>(), *logits = prepared.operands.logits.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const auto exponent = static_cast<float>(beta);
  const bool penalised = beta > 0.0;
  const double penalty = at::parallel_reduce(
      int64_t{0}, weight.numel(), kGrain, 0.0,
      [&](int64_t begin, int64_t end, double sum) {
        for (int64_t i = begin; i < end; ++i) {
          const Params& p = params_at(prepared, i);
          const SoftRounding r = soft_rounding(src[i], logits[i], p);
          y[i] = soft_rounded_value(r, p);
          if (penalised) sum += static_cast<double>(rounding_penalty(r.h, exponent));
        }
        return sum;
      },
      [](double a, double b) { return a + b; });
  return {out, at::full({}, static_cast<float>(penalty), weight.options())};
}

at::Tensor soft_round_backward(const at::Tensor& grad_y, const at::Tensor& grad_penalty, const at::Tensor& w,
                               const at::Tensor& v, const at::Tensor& scale, const at::Tensor& zero_point,
                               const at::Tensor& qmax, int64_t axis, double beta) {
  const Prepared prepared = prepare("soft_round_backward", w, v, scale, zero_point, qmax, axis);
  const at::Tensor& weight = prepared.operands.weight;
  const at::Tensor grad = laid_out_like(grad_y, weight, "soft_round_backward", "grad_y");
  const at::Tensor penalty = checked_scalar(grad_penalty, weight, "soft_round_backward", "grad_penalty");
  const float penalty_grad = beta > 0.0 ? penalty.data_ptr<float>()[0] : 0.0f;
  at::Tensor out = at::empty_like(weight);
  const float *src = weight.data_ptr<float>(), *logits = prepared.operands.logits.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* grad_v = out.data_ptr<float>();
  const auto exponent = static_cast<float>(beta);
  at::parallel_for(0, weight.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Params& p = params_at(prepared, i);
      grad_v[i] = soft_rounding_grad(soft_rounding(src[i], logits[i], p), p, g[i], penalty_grad, exponent);
    }
  });
  return out;
}

}  // namespace
}  // namespace ptq

TORCH_LIBRARY_FRAGMENT(ptq_kernels, m) {
  m.def("soft_round(Tensor w, Tensor v, Tensor scale, Tensor zero_point, Tensor qmax, int axis, float beta) "
        "-> (Tensor, Tensor)");
  m.def("soft_round_backward(Tensor grad_y, Tensor grad_penalty, Tensor w, Tensor v, Tensor scale, "
        "Tensor zero_point, Tensor qmax, int axis, float beta) -> Tensor");
}

TORCH_LIBRARY_IMPL(ptq_kernels, CPU, m) {
  m.impl("soft_round", &ptq::soft_round);
  m.impl("soft_round_backward", &ptq::soft_round_backward);
}
