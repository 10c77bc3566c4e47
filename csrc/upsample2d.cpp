// pulse_ext::upsample2d (the skip image path's 2x [1,3,3,1] FIR upsampling) and its adjoint, CPU only.
//
// The library form (a depthwise stride-2 transposed convolution, oneDNN) spent about 0.5 ms forward +
// backward on an [8, 3, 64, 64] image, for 0.1 M outputs of 4 taps each: our separable polyphase loops
// (cpu::upsample2d_nhwc) stream it. CUDA keeps the library form (pulse_ext/ops/modulated_conv.py).
// The kernels work channels-last; an NCHW input is converted and its output returned NCHW.
#include <torch/library.h>

#include "backend.h"

namespace pulse_ext {
namespace {

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

at::MemoryFormat output_format(const at::Tensor& t) {
  return is_cpu_channels_last(t) ? kChannelsLast : at::MemoryFormat::Contiguous;
}

at::Tensor upsample2d(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "upsample2d: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(!x.is_cuda(), "upsample2d: the fused op runs on the CPU; x is on ", x.device());
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const at::Tensor x_nhwc = x.contiguous(kChannelsLast);
  at::Tensor y = at::empty({n, c, 2 * h, 2 * w}, x.options().memory_format(kChannelsLast));
  if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "upsample2d_nhwc", [&] {
      cpu::upsample2d_nhwc<scalar_t>(x_nhwc.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n, c, h, w);
    });
  }
  return y.contiguous(output_format(x));
}

// grad [N, C, 2H, 2W] -> [N, C, H, W].
at::Tensor upsample2d_backward(const at::Tensor& grad) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(2) % 2 == 0 && grad.size(3) % 2 == 0,
              "upsample2d_backward: grad must be [N, C, 2H, 2W], got ", grad.sizes());
  TORCH_CHECK(!grad.is_cuda(), "upsample2d_backward: the fused op runs on the CPU; grad is on ", grad.device());
  const int64_t n = grad.size(0), c = grad.size(1), h = grad.size(2) / 2, w = grad.size(3) / 2;
  const at::Tensor g_nhwc = grad.contiguous(kChannelsLast);
  at::Tensor grad_x = at::empty({n, c, h, w}, grad.options().memory_format(kChannelsLast));
  if (grad_x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "upsample2d_adjoint_nhwc", [&] {
      cpu::upsample2d_adjoint_nhwc<scalar_t>(g_nhwc.const_data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), n, c, h,
                                             w);
    });
  }
  return grad_x.contiguous(output_format(grad));
}

}  // namespace

TORCH_LIBRARY_IMPL(pulse_ext, CPU, m) {
  m.impl("upsample2d", &upsample2d);
  m.impl("upsample2d_backward", &upsample2d_backward);
}

}  // namespace pulse_ext
