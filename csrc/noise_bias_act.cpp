// pulse_ext::noise_bias_act and its backward for CPU and CUDA tensors.
#include <torch/library.h>

#include "backend.h"

namespace pulse_ext {
namespace {

constexpr const char* kOp = "noise_bias_act";

struct Inputs {
  at::Tensor x;
  std::optional<at::Tensor> demod, noise, noise_strength, bias;
};

Inputs prepare(const at::Tensor& x, const std::optional<at::Tensor>& demod, const std::optional<at::Tensor>& noise,
               const std::optional<at::Tensor>& noise_strength, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 4, kOp, ": x must be [N, C, H, W], got ", x.sizes());
  const int64_t n = x.size(0), c = x.size(1);
  if (demod && demod->defined())
    TORCH_CHECK(demod->dim() == 2 && demod->size(0) == n && demod->size(1) == c, kOp, ": demod must be [N, C]=[", n,
                ", ", c, "], got ", demod->sizes());
  if (noise && noise->defined())
    TORCH_CHECK(noise->dim() == 4 && (noise->size(0) == 1 || noise->size(0) == n) && noise->size(1) == 1 &&
                    noise->size(2) == x.size(2) && noise->size(3) == x.size(3),
                kOp, ": noise must be [1 or N, 1, H, W] for x of shape ", x.sizes(), ", got ", noise->sizes());
  if (noise_strength && noise_strength->defined())
    TORCH_CHECK(noise_strength->numel() == 1, kOp, ": noise_strength must be a scalar, got ", noise_strength->sizes());
  if (bias && bias->defined())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c, kOp, ": bias must be [C]=[", c, "], got ", bias->sizes());
  check_like(demod, x, kOp, "demod");
  check_like(noise, x, kOp, "noise");
  check_like(noise_strength, x, kOp, "noise_strength");
  check_like(bias, x, kOp, "bias");
  return {is_cpu_channels_last(x) ? x : x.contiguous(), contiguous_or_none(demod), contiguous_or_none(noise),
          contiguous_or_none(noise_strength), contiguous_or_none(bias)};
}

template <typename T>
NoiseBiasActArgs<T> make_args(const Inputs& in, double slope, double gain, std::optional<double> clamp) {
  const at::Tensor& x = in.x;
  return {x.const_data_ptr<T>(),
          data_or_null<T>(in.demod),
          data_or_null<T>(in.noise),
          data_or_null<T>(in.noise_strength),
          data_or_null<T>(in.bias),
          x.size(0),
          x.size(1),
          x.size(2) * x.size(3),
          in.noise ? in.noise->size(0) : 0,
          {T(slope), T(gain), T(clamp.value_or(0.0)), clamp.has_value()}};
}

at::Tensor noise_bias_act(const at::Tensor& x, const std::optional<at::Tensor>& demod,
                          const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& noise_strength,
                          const std::optional<at::Tensor>& bias, double slope, double gain,
                          std::optional<double> clamp) {
  const c10::DeviceGuard guard(x.device());
  Inputs in = prepare(x, demod, noise, noise_strength, bias);
  at::Tensor y = at::empty_like(in.x);  // the layout of x: NCHW, or NHWC on the CPU
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kOp, [&] {
    auto args = make_args<scalar_t>(in, slope, gain, clamp);
    if (is_cpu_channels_last(in.x)) {
      cpu::noise_bias_act_forward_nhwc<scalar_t>(args, y.data_ptr<scalar_t>());
    } else {
      PULSE_CALL_BACKEND(x, noise_bias_act_forward<scalar_t>, args, y.data_ptr<scalar_t>());
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> noise_bias_act_backward(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& x, const std::optional<at::Tensor>& demod,
    const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& noise_strength,
    const std::optional<at::Tensor>& bias, double slope, double gain, std::optional<double> clamp) {
  const c10::DeviceGuard guard(x.device());
  Inputs in = prepare(x, demod, noise, noise_strength, bias);
  TORCH_CHECK(grad.sizes() == x.sizes() && y.sizes() == x.sizes(), "noise_bias_act_backward: grad ", grad.sizes(),
              " and y ", y.sizes(), " must have the shape of x ", x.sizes());
  check_like(grad, x, "noise_bias_act_backward", "grad");
  check_like(y, x, "noise_bias_act_backward", "y");
  const auto layout = is_cpu_channels_last(in.x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor grad_c = grad.contiguous(layout), y_c = y.contiguous(layout);
  const int64_t n = x.size(0), c = x.size(1);
  at::Tensor grad_x = at::empty_like(in.x);
  at::Tensor demod_partial = at::empty({in.demod ? n : 0, c}, x.options());
  at::Tensor bias_partial = at::empty({n, c}, x.options());
  at::Tensor noise_channel_sum = at::empty({in.noise ? n : 0, x.size(2) * x.size(3)}, x.options());
  if (x.numel() == 0) {
    bias_partial.zero_();
    noise_channel_sum.zero_();
    demod_partial.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "noise_bias_act_backward", [&] {
      auto args = make_args<scalar_t>(in, slope, gain, clamp);
      NoiseBiasActGrads<scalar_t> grads{grad_x.data_ptr<scalar_t>(), in.demod ? demod_partial.data_ptr<scalar_t>() : nullptr,
                                        bias_partial.data_ptr<scalar_t>(),
                                        in.noise ? noise_channel_sum.data_ptr<scalar_t>() : nullptr};
      if (is_cpu_channels_last(in.x)) {
        cpu::noise_bias_act_backward_nhwc<scalar_t>(args, grad_c.const_data_ptr<scalar_t>(),
                                                    y_c.const_data_ptr<scalar_t>(), grads);
      } else {
        PULSE_CALL_BACKEND(x, noise_bias_act_backward<scalar_t>, args, grad_c.const_data_ptr<scalar_t>(),
                           y_c.const_data_ptr<scalar_t>(), grads);
      }
    });
  }
  const at::Tensor empty = at::empty({0}, x.options());
  at::Tensor grad_demod = in.demod ? demod_partial : empty;
  at::Tensor grad_bias = empty, grad_noise = empty, grad_strength = empty;
  if (!x.is_cuda()) {
    if (in.bias) grad_bias = at::empty({c}, x.options());
    if (in.noise) grad_noise = at::empty(in.noise->sizes(), x.options());
    if (in.noise && in.noise_strength) grad_strength = at::empty(in.noise_strength->sizes(), x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "noise_bias_act_reduce_grads", [&] {
      cpu::noise_bias_act_reduce_grads<scalar_t>(make_args<scalar_t>(in, slope, gain, clamp),
                                                 bias_partial.const_data_ptr<scalar_t>(),
                                                 in.noise ? noise_channel_sum.const_data_ptr<scalar_t>() : nullptr,
                                                 in.bias ? grad_bias.data_ptr<scalar_t>() : nullptr,
                                                 in.noise ? grad_noise.data_ptr<scalar_t>() : nullptr,
                                                 grad_strength.numel() ? grad_strength.data_ptr<scalar_t>() : nullptr);
    });
    return {grad_x, grad_demod, grad_noise, grad_strength, grad_bias};
  }
  // CUDA: the same reductions (cpu::noise_bias_act_reduce_grads) as ATen calls on the device.
  if (in.bias) grad_bias = bias_partial.sum(0);
  if (in.noise) {
    const at::Tensor& nz = *in.noise;
    at::Tensor channel_sum = noise_channel_sum.view({n, 1, x.size(2), x.size(3)});
    // d/d strength = sum over every element of gt * noise = sum over (n, pixel) of noise * channel sum.
    if (in.noise_strength) grad_strength = (channel_sum * nz).sum().reshape(in.noise_strength->sizes());
    at::Tensor per_noise = nz.size(0) == 1 ? channel_sum.sum(0, true) : channel_sum;
    grad_noise = in.noise_strength ? per_noise * in.noise_strength->reshape(std::vector<int64_t>{}) : per_noise;
  }
  return {grad_x, grad_demod, grad_noise, grad_strength, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pulse_ext, CPU, m) {
  m.impl("noise_bias_act", &noise_bias_act);
  m.impl("noise_bias_act_backward", &noise_bias_act_backward);
}

#ifdef PULSE_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(pulse_ext, CUDA, m) {
  m.impl("noise_bias_act", &noise_bias_act);
  m.impl("noise_bias_act_backward", &noise_bias_act_backward);
}
#endif

}  // namespace pulse_ext
