// Autograd for the forward ops (noise_bias_act, area_downscale_loss, modulated_conv2d, upsample2d), in C++.
//
// At the generator's small layers (4x4, 8x8) an op's kernels take a few microseconds; an autograd
// formula registered from Python (torch.library.register_autograd) adds 40-80 us per forward+backward,
// more than the kernels themselves. Registered here, under the Autograd dispatch key, the whole
// forward+backward stays in C++ (the torchvision pattern). The backward ops are not differentiable
// again (PULSE and the generator never need double backward through them).
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

// ---------------------------------------------------------------------------------------- modulated_conv2d

using ModConvSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                              int64_t, int64_t, std::optional<at::ScalarType>);
using ModConvBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, int64_t, int64_t, std::optional<at::ScalarType>);
using ModConvWeightGradSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const std::optional<at::Tensor>&, int64_t, int64_t,
                                        std::optional<at::ScalarType>);

class ModulatedConvFunction : public torch::autograd::Function<ModulatedConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& styles, const std::optional<at::Tensor>& demod, int64_t up,
                            int64_t padding, std::optional<at::ScalarType> conv_dtype) {
    static auto op = op_handle<ModConvSig>("pulse_ext::modulated_conv2d");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = op.call(x, weight, styles, demod, up, padding, conv_dtype);
    ctx->save_for_backward({y, x, weight, styles, optional_or_undefined(demod)});
    ctx->saved_data["up"] = up;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["conv_dtype"] = conv_dtype.has_value() ? c10::IValue(int64_t(*conv_dtype)) : c10::IValue();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto backward_op = op_handle<ModConvBackwardSig>("pulse_ext::modulated_conv2d_backward");
    static auto weight_grad_op = op_handle<ModConvWeightGradSig>("pulse_ext::modulated_conv2d_weight_grad");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &x = saved[1], &weight = saved[2], &styles = saved[3];
    const std::optional<at::Tensor> demod = undefined_to_none(saved[4]);
    const int64_t up = ctx->saved_data["up"].toInt(), padding = ctx->saved_data["padding"].toInt();
    const c10::IValue& dtype_value = ctx->saved_data["conv_dtype"];
    const std::optional<at::ScalarType> conv_dtype =
        dtype_value.isNone() ? std::nullopt : std::optional<at::ScalarType>(at::ScalarType(dtype_value.toInt()));
    const at::Tensor grad = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(y);
    // Edges: x, weight, styles, then demod when it was given.
    const bool want_x = ctx->needs_input_grad(0), want_weight = ctx->needs_input_grad(1),
               want_styles = ctx->needs_input_grad(2), want_demod = demod && ctx->needs_input_grad(3);
    variable_list result(7);  // one per forward argument; up, padding and conv_dtype get none
    if (want_x || want_styles || want_demod) {
      auto [grad_x, grad_styles, grad_demod] =
          backward_op.call(grad, y, x, weight, styles, demod, up, padding, conv_dtype);
      if (want_x) result[0] = grad_x;
      if (want_styles) result[2] = grad_styles;
      if (want_demod) result[3] = grad_demod;
    }
    if (want_weight) result[1] = weight_grad_op.call(grad, x, weight, styles, demod, up, padding, conv_dtype);
    return result;
  }
};

at::Tensor modulated_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                                     const std::optional<at::Tensor>& demod, int64_t up, int64_t padding,
                                     std::optional<at::ScalarType> conv_dtype) {
  return ModulatedConvFunction::apply(x, weight, styles, demod, up, padding, conv_dtype);
}

// -------------------------------------------------------------------------------------------- upsample2d

using UpsampleSig = at::Tensor(const at::Tensor&);

// Linear, so the backward is the adjoint op on grad alone (nothing saved).
class Upsample2dFunction : public torch::autograd::Function<Upsample2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* /*ctx*/, const at::Tensor& x) {
    static auto op = op_handle<UpsampleSig>("pulse_ext::upsample2d");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x);
  }

  static variable_list backward(AutogradContext* /*ctx*/, variable_list grad_outputs) {
    static auto op = op_handle<UpsampleSig>("pulse_ext::upsample2d_backward");
    if (!grad_outputs[0].defined()) return {at::Tensor()};
    return {op.call(grad_outputs[0])};
  }
};

at::Tensor upsample2d_autograd(const at::Tensor& x) { return Upsample2dFunction::apply(x); }

}  // namespace

TORCH_LIBRARY_IMPL(pulse_ext, Autograd, m) {
  m.impl("upsample2d", &upsample2d_autograd);
  m.impl("noise_bias_act", &noise_bias_act_autograd);
  m.impl("area_downscale_loss", &area_downscale_loss_autograd);
  m.impl("modulated_conv2d", &modulated_conv2d_autograd);
}

}  // namespace pulse_ext
