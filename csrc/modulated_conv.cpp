// pulse_ext::modulated_conv2d and its data-gradient backward for CPU and CUDA tensors.
//
// The weight is shared by the whole batch: styles scale the input channels (one pass fused with the
// copy the convolution needs anyway), the convolution is the backend's library convolution
// (oneDNN on CPU, cuDNN on CUDA) on the shared weight, and demodulation scales output channels
// (fused into the FIR pass for up=2). The backward never forms a weight gradient.
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "backend.h"

namespace pulse_ext {
namespace {

constexpr const char* kOp = "modulated_conv2d";

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                  const std::optional<at::Tensor>& demod, int64_t up, int64_t padding) {
  TORCH_CHECK(x.dim() == 4, kOp, ": x must be [N, Cin, H, W], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3), kOp, ": weight must be [Cout, Cin, k, k], got ",
              weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), kOp, ": weight must have Cin=", x.size(1), " input channels, got ",
              weight.sizes());
  TORCH_CHECK(styles.dim() == 2 && styles.size(0) == x.size(0) && styles.size(1) == x.size(1), kOp,
              ": styles must be [N, Cin]=[", x.size(0), ", ", x.size(1), "], got ", styles.sizes());
  if (demod && demod->defined())
    TORCH_CHECK(demod->dim() == 2 && demod->size(0) == x.size(0) && demod->size(1) == weight.size(0), kOp,
                ": demod must be [N, Cout]=[", x.size(0), ", ", weight.size(0), "], got ", demod->sizes());
  TORCH_CHECK(up == 1 || up == 2, kOp, ": up must be 1 or 2, got ", up);
  const int64_t k = weight.size(2);
  TORCH_CHECK(padding >= 0, kOp, ": padding must be >= 0, got ", padding);
  if (up == 2)
    TORCH_CHECK(k % 2 == 1 && padding == k / 2, kOp, ": up=2 needs an odd kernel and padding=k//2, got k=", k,
                ", padding=", padding);
  check_like(weight, x, kOp, "weight");
  check_like(styles, x, kOp, "styles");
  check_like(demod, x, kOp, "demod");
}

// Which convolution runs a stride-1 modulated convolution on CUDA: cuDNN on the style-scaled input
// ("cudnn", the default), or the direct implicit-GEMM kernel with styles and demodulation fused
// ("igemm"). An environment variable so benchmarks and tests can compare them without an API change.
bool use_cuda_igemm() {
  const char* value = std::getenv("PULSE_EXT_CUDA_CONV");
  if (value == nullptr || *value == '\0' || std::string(value) == "cudnn") return false;
  TORCH_CHECK(std::string(value) == "igemm", "PULSE_EXT_CUDA_CONV must be 'cudnn' or 'igemm', got '", value, "'");
  return true;
}

// out[n, c] = x[n, c] * scale[n, c] over each plane (out may alias x).
void scale_channels(const at::Tensor& x, const at::Tensor& scale, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_channels", [&] {
    PULSE_CALL_BACKEND(x, scale_channels<scalar_t>, x.const_data_ptr<scalar_t>(), scale.const_data_ptr<scalar_t>(),
                       out.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2) * x.size(3));
  });
}

at::Tensor modulated_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                            const std::optional<at::Tensor>& demod, int64_t up, int64_t padding) {
  const c10::DeviceGuard guard(x.device());
  check_inputs(x, weight, styles, demod, up, padding);
  const at::Tensor x_c = x.contiguous(), styles_c = styles.contiguous();
  const auto demod_c = contiguous_or_none(demod);
#ifdef PULSE_EXT_WITH_CUDA
  if (up == 1 && x.is_cuda() && use_cuda_igemm()) {
    const at::Tensor weight_c = weight.contiguous();
    const int64_t k = weight.size(2), ho = x.size(2) + 2 * padding - k + 1, wo = x.size(3) + 2 * padding - k + 1;
    at::Tensor y = at::empty({x.size(0), weight.size(0), ho, wo}, x.options());
    if (y.numel() == 0) return y;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "modulated_conv2d_igemm", [&] {
      ModConvArgs<scalar_t> args{x_c.const_data_ptr<scalar_t>(), weight_c.const_data_ptr<scalar_t>(),
                                 styles_c.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(demod_c), x.size(0),
                                 int(x.size(1)), int(x.size(2)), int(x.size(3)), int(weight.size(0)), int(k),
                                 int(padding), int(ho), int(wo)};
      PULSE_CALL_CUDA(x, modulated_conv2d_igemm<scalar_t>, args, y.data_ptr<scalar_t>());
    });
    return y;
  }
#endif
  at::Tensor xs = at::empty_like(x_c);
  if (x.numel() > 0) scale_channels(x_c, styles_c, xs);
  if (up == 1) {
    at::Tensor y = at::convolution(xs, weight, std::nullopt, {1, 1}, {padding, padding}, {1, 1}, false, {0, 0}, 1)
                       .contiguous();
    if (demod_c && y.numel() > 0) scale_channels(y, *demod_c, y);
    return y;
  }
  // up=2: stride-2 transposed convolution to [2H+1, 2W+1], then the FIR filter (x demod) to [2H, 2W].
  // On CPU, oneDNN runs the transposed convolution only for channels-last input; on NCHW, ATen takes
  // a slow fallback (measured 28 ms vs 6 + 2 x 3 ms for the layout changes at 32 x 64ch x 32px).
  if (!x.is_cuda()) xs = xs.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor t =
      at::convolution(xs, weight.transpose(0, 1), std::nullopt, {2, 2}, {0, 0}, {1, 1}, true, {0, 0}, 1).contiguous();
  at::Tensor y = at::empty({x.size(0), weight.size(0), t.size(2) - 1, t.size(3) - 1}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fir_upsample", [&] {
    PULSE_CALL_BACKEND(x, fir_upsample_forward<scalar_t>, t.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(demod_c),
                       y.data_ptr<scalar_t>(), t.size(0) * t.size(1), t.size(2), t.size(3));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulated_conv2d_backward(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
    const std::optional<at::Tensor>& demod, int64_t up, int64_t padding) {
  const c10::DeviceGuard guard(x.device());
  check_inputs(x, weight, styles, demod, up, padding);
  TORCH_CHECK(grad.sizes() == y.sizes(), "modulated_conv2d_backward: grad ", grad.sizes(), " must match y ", y.sizes());
  check_like(grad, x, "modulated_conv2d_backward", "grad");
  check_like(y, x, "modulated_conv2d_backward", "y");
  const at::Tensor x_c = x.contiguous(), styles_c = styles.contiguous(), y_c = y.contiguous();
  const auto demod_c = contiguous_or_none(demod);
  at::Tensor grad_c = grad.contiguous();
  at::Tensor grad_demod = at::empty({0}, x.options());
  if (demod_c) {
    // grad wrt the un-demodulated output, and d loss / d demod = sum(grad * y) / demod, in one pass.
    at::Tensor grad_pre = at::empty_like(grad_c);
    grad_demod = at::zeros_like(*demod_c);
    if (grad_c.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "demod_backward", [&] {
        PULSE_CALL_BACKEND(x, demod_backward<scalar_t>, grad_c.const_data_ptr<scalar_t>(), y_c.const_data_ptr<scalar_t>(),
                           demod_c->const_data_ptr<scalar_t>(), grad_pre.data_ptr<scalar_t>(),
                           grad_demod.data_ptr<scalar_t>(), grad_c.size(0), grad_c.size(1),
                           grad_c.size(2) * grad_c.size(3));
      });
    }
    grad_c = grad_pre;
  }
  at::Tensor grad_xs;
  if (up == 1) {
    grad_xs = std::get<0>(at::convolution_backward(grad_c, x_c, weight, std::nullopt, {1, 1}, {padding, padding}, {1, 1},
                                                   false, {0, 0}, 1, {true, false, false}));
  } else {
    at::Tensor grad_t = at::empty({grad_c.size(0), grad_c.size(1), grad_c.size(2) + 1, grad_c.size(3) + 1}, x.options());
    if (grad_t.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fir_upsample_backward", [&] {
        PULSE_CALL_BACKEND(x, fir_upsample_backward<scalar_t>, grad_c.const_data_ptr<scalar_t>(),
                           grad_t.data_ptr<scalar_t>(), grad_t.size(0) * grad_t.size(1), grad_t.size(2), grad_t.size(3));
      });
    }
    grad_xs = std::get<0>(at::convolution_backward(grad_t, x_c, weight.transpose(0, 1), std::nullopt, {2, 2}, {0, 0},
                                                   {1, 1}, true, {0, 0}, 1, {true, false, false}));
  }
  grad_xs = grad_xs.contiguous();
  at::Tensor grad_x = at::empty_like(x_c);
  at::Tensor grad_styles = at::zeros_like(styles_c);
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_channels_backward", [&] {
      PULSE_CALL_BACKEND(x, scale_channels_backward<scalar_t>, grad_xs.const_data_ptr<scalar_t>(),
                         x_c.const_data_ptr<scalar_t>(), styles_c.const_data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
                         grad_styles.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2) * x.size(3));
    });
  }
  return {grad_x, grad_styles, grad_demod};
}

}  // namespace

TORCH_LIBRARY_IMPL(pulse_ext, CPU, m) {
  m.impl("modulated_conv2d", &modulated_conv2d);
  m.impl("modulated_conv2d_backward", &modulated_conv2d_backward);
}

#ifdef PULSE_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(pulse_ext, CUDA, m) {
  m.impl("modulated_conv2d", &modulated_conv2d);
  m.impl("modulated_conv2d_backward", &modulated_conv2d_backward);
}
#endif

}  // namespace pulse_ext
