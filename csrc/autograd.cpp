// Autograd for pulse_ext::noise_bias_act and pulse_ext::area_downscale_loss, in C++.
//
// These two ops are elementwise/reduction passes whose cost at the generator's small layers (4x4,
// 8x8) is a few microseconds; an autograd formula registered from Python (torch.library.register_autograd)
// adds ~40 us per forward+backward on top, more than the kernels themselves. Registered here, under the
// Autograd dispatch key, the whole forward+backward stays in C++ (the torchvision pattern).
// modulated_conv2d keeps its Python formula: its weight gradient goes through the reference path, and
// its convolutions dwarf the overhead.
#include <torch/autograd.h>
#include <torch/library.h>

namespace pulse_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor optional_or_undefined(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

std::optional<at::Tensor> undefined_to_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// ------------------------------------------------------------------------------------------ noise_bias_act

using NoiseBiasActSig = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, double, double, std::optional<double>);
using NoiseBiasActBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
    double, std::optional<double>);

class NoiseBiasActFunction : public torch::autograd::Function<NoiseBiasActFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& demod,
                            const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& noise_strength,
                            const std::optional<at::Tensor>& bias, double slope, double gain,
                            std::optional<double> clamp) {
    static auto op = op_handle<NoiseBiasActSig>("pulse_ext::noise_bias_act");
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // reach the CPU/CUDA kernel, not this one again
    at::Tensor y = op.call(x, demod, noise, noise_strength, bias, slope, gain, clamp);
    // The backward recovers the activation's branch from y, so y (not a copy of the pre-activation) is saved.
    ctx->save_for_backward({y, x, optional_or_undefined(demod), optional_or_undefined(noise),
                            optional_or_undefined(noise_strength), optional_or_undefined(bias)});
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["gain"] = gain;
    ctx->saved_data["clamp"] = clamp.has_value() ? c10::IValue(*clamp) : c10::IValue();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto op = op_handle<NoiseBiasActBackwardSig>("pulse_ext::noise_bias_act_backward");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &x = saved[1];
    const std::optional<at::Tensor> demod = undefined_to_none(saved[2]), noise = undefined_to_none(saved[3]),
                                    strength = undefined_to_none(saved[4]), bias = undefined_to_none(saved[5]);
    const c10::IValue& clamp = ctx->saved_data["clamp"];
    at::Tensor grad = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(y);
    auto grads = op.call(grad, y, x, demod, noise, strength, bias, ctx->saved_data["slope"].toDouble(),
                         ctx->saved_data["gain"].toDouble(),
                         clamp.isNone() ? std::nullopt : std::optional<double>(clamp.toDouble()));
    const at::Tensor outs[5] = {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads), std::get<3>(grads),
                                std::get<4>(grads)};
    variable_list result(8);  // one per forward argument; slope, gain and clamp get none
    size_t edge = 0;          // needs_input_grad counts only the tensors that were given
    for (size_t i = 0; i < 5; ++i) {
      if (!saved[i + 1].defined()) continue;
      if (ctx->needs_input_grad(edge++)) result[i] = outs[i];
    }
    return result;
  }
};

at::Tensor noise_bias_act_autograd(const at::Tensor& x, const std::optional<at::Tensor>& demod,
                                   const std::optional<at::Tensor>& noise,
                                   const std::optional<at::Tensor>& noise_strength,
                                   const std::optional<at::Tensor>& bias, double slope, double gain,
                                   std::optional<double> clamp) {
  return NoiseBiasActFunction::apply(x, demod, noise, noise_strength, bias, slope, gain, clamp);
}

// ------------------------------------------------------------------------------------- area_downscale_loss

using AreaLossSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&);
using AreaLossBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t);

class AreaDownscaleLossFunction : public torch::autograd::Function<AreaDownscaleLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& img, const at::Tensor& target) {
    static auto op = op_handle<AreaLossSig>("pulse_ext::area_downscale_loss");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [l2, l1, diff] = op.call(img, target);
    ctx->save_for_backward({diff});
    ctx->saved_data["img_height"] = img.size(2);
    ctx->saved_data["img_width"] = img.size(3);
    ctx->saved_data["target_batch"] = target.size(0);
    ctx->mark_non_differentiable({diff});
    return {l2, l1, diff};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto op = op_handle<AreaLossBackwardSig>("pulse_ext::area_downscale_loss_backward");
    const at::Tensor diff = ctx->get_saved_variables()[0];
    const int64_t n = diff.size(0);
    const at::Tensor grad_l2 = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros({n}, diff.options());
    const at::Tensor grad_l1 = grad_outputs[1].defined() ? grad_outputs[1] : at::zeros({n}, diff.options());
    at::Tensor grad_img, grad_target;
    if (ctx->needs_input_grad(0))
      grad_img = op.call(grad_l2, grad_l1, diff, ctx->saved_data["img_height"].toInt(),
                         ctx->saved_data["img_width"].toInt());
    if (ctx->needs_input_grad(1)) {
      // d loss / d target = -(d loss / d downscaled image): low resolution, so plain ATen.
      const at::Tensor g2 = grad_l2.reshape({n, 1, 1, 1}), g1 = grad_l1.reshape({n, 1, 1, 1});
      const at::Tensor grad_ds = diff.mul(g2).mul_(2.0).add_(diff.sign().mul_(g1)).div_(double(diff[0].numel()));
      grad_target = ctx->saved_data["target_batch"].toInt() == 1 ? grad_ds.sum(0, true).neg_() : grad_ds.neg_();
    }
    return {grad_img, grad_target};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> area_downscale_loss_autograd(const at::Tensor& img,
                                                                            const at::Tensor& target) {
  auto outputs = AreaDownscaleLossFunction::apply(img, target);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pulse_ext, Autograd, m) {
  m.impl("noise_bias_act", &noise_bias_act_autograd);
  m.impl("area_downscale_loss", &area_downscale_loss_autograd);
}

}  // namespace pulse_ext
