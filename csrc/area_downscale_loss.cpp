// pulse_ext::area_downscale_loss and its backward for CPU and CUDA tensors.
#include <torch/library.h>

#include "backend.h"

namespace pulse_ext {
namespace {

constexpr const char* kOp = "area_downscale_loss";

std::tuple<at::Tensor, at::Tensor, at::Tensor> area_downscale_loss(const at::Tensor& img, const at::Tensor& target) {
  const c10::DeviceGuard guard(img.device());
  TORCH_CHECK(img.dim() == 4, kOp, ": img must be [N, C, H, W], got ", img.sizes());
  TORCH_CHECK(target.dim() == 4, kOp, ": target must be [1 or N, C, h, w], got ", target.sizes());
  const int64_t n = img.size(0), c = img.size(1), H = img.size(2), W = img.size(3);
  const int64_t h = target.size(2), w = target.size(3);
  TORCH_CHECK((target.size(0) == 1 || target.size(0) == n) && target.size(1) == c, kOp,
              ": target must be [1 or N, C, h, w] for img ", img.sizes(), ", got ", target.sizes());
  TORCH_CHECK(h > 0 && w > 0 && H % h == 0 && W % w == 0, kOp, ": the target size ", h, "x", w,
              " must divide the image size ", H, "x", W);
  check_like(target, img, kOp, "target");
  const at::Tensor img_c = img.contiguous(), target_c = target.contiguous();
  at::Tensor diff = at::empty({n, c, h, w}, img.options());
  at::Tensor sq_partial = at::zeros({n, c * h}, img.options());
  at::Tensor abs_partial = at::zeros({n, c * h}, img.options());
  if (diff.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), kOp, [&] {
      AreaDownscaleArgs<scalar_t> args{img_c.const_data_ptr<scalar_t>(), target_c.const_data_ptr<scalar_t>(), n, c, H, W,
                                       h, w, target.size(0)};
      PULSE_CALL_BACKEND(img, area_downscale_forward<scalar_t>, args, diff.data_ptr<scalar_t>(),
                         sq_partial.data_ptr<scalar_t>(), abs_partial.data_ptr<scalar_t>());
    });
  }
  const double count = double(c * h * w);
  if (img.is_cuda()) return {sq_partial.sum(1).div_(count), abs_partial.sum(1).div_(count), diff};
  // The same means as plain loops on the CPU: at PULSE's shapes four small ATen calls cost as much as the kernel.
  at::Tensor l2 = at::empty({n}, img.options()), l1 = at::empty({n}, img.options());
  AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "area_downscale_loss_means", [&] {
    const scalar_t *sq = sq_partial.const_data_ptr<scalar_t>(), *ab = abs_partial.const_data_ptr<scalar_t>();
    scalar_t *l2_out = l2.data_ptr<scalar_t>(), *l1_out = l1.data_ptr<scalar_t>();
    const int64_t rows = c * h;
    for (int64_t i = 0; i < n; ++i) {
      double sq_sum = 0, abs_sum = 0;
      for (int64_t r = 0; r < rows; ++r) {
        sq_sum += sq[i * rows + r];
        abs_sum += ab[i * rows + r];
      }
      l2_out[i] = scalar_t(sq_sum / count);
      l1_out[i] = scalar_t(abs_sum / count);
    }
  });
  return {l2, l1, diff};
}

at::Tensor area_downscale_loss_backward(const at::Tensor& grad_l2, const at::Tensor& grad_l1, const at::Tensor& diff,
                                        int64_t img_height, int64_t img_width) {
  const c10::DeviceGuard guard(diff.device());
  TORCH_CHECK(diff.dim() == 4, "area_downscale_loss_backward: diff must be [N, C, h, w], got ", diff.sizes());
  const int64_t n = diff.size(0), c = diff.size(1), h = diff.size(2), w = diff.size(3);
  TORCH_CHECK(h > 0 && w > 0 && img_height % h == 0 && img_width % w == 0,
              "area_downscale_loss_backward: image size ", img_height, "x", img_width, " is not a multiple of ", h,
              "x", w);
  TORCH_CHECK(grad_l2.numel() == n && grad_l1.numel() == n,
              "area_downscale_loss_backward: grad_l2 and grad_l1 must have N=", n, " elements");
  check_like(grad_l2, diff, "area_downscale_loss_backward", "grad_l2");
  check_like(grad_l1, diff, "area_downscale_loss_backward", "grad_l1");
  // Per-sample scales of the two terms, folding in the mean over C*h*w and over each block (on the CPU as a
  // plain loop over the N values: two ATen calls there would cost as much as the kernel).
  const double denom = double(c * h * w) * double((img_height / h) * (img_width / w));
  at::Tensor scale2, scale1;
  if (diff.is_cuda()) {
    scale2 = (grad_l2.reshape({n}) * (2.0 / denom)).contiguous();
    scale1 = (grad_l1.reshape({n}) * (1.0 / denom)).contiguous();
  } else {
    scale2 = at::empty({n}, diff.options());
    scale1 = at::empty({n}, diff.options());
    AT_DISPATCH_FLOATING_TYPES(diff.scalar_type(), "area_downscale_loss_scales", [&] {
      const at::Tensor grad_l2_n = grad_l2.reshape({n}), grad_l1_n = grad_l1.reshape({n});  // views: strides kept
      const auto g2 = grad_l2_n.accessor<scalar_t, 1>();
      const auto g1 = grad_l1_n.accessor<scalar_t, 1>();
      scalar_t *s2 = scale2.data_ptr<scalar_t>(), *s1 = scale1.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        s2[i] = scalar_t(double(g2[i]) * (2.0 / denom));
        s1[i] = scalar_t(double(g1[i]) * (1.0 / denom));
      }
    });
  }
  const at::Tensor diff_c = diff.contiguous();
  at::Tensor grad_img = at::empty({n, c, img_height, img_width}, diff.options());
  if (grad_img.numel() == 0) return grad_img;
  AT_DISPATCH_FLOATING_TYPES(diff.scalar_type(), "area_downscale_loss_backward", [&] {
    PULSE_CALL_BACKEND(diff, area_downscale_backward<scalar_t>, diff_c.const_data_ptr<scalar_t>(),
                       scale2.const_data_ptr<scalar_t>(), scale1.const_data_ptr<scalar_t>(),
                       grad_img.data_ptr<scalar_t>(), n, c, img_height, img_width, h, w);
  });
  return grad_img;
}

}  // namespace

TORCH_LIBRARY_IMPL(pulse_ext, CPU, m) {
  m.impl("area_downscale_loss", &area_downscale_loss);
  m.impl("area_downscale_loss_backward", &area_downscale_loss_backward);
}

#ifdef PULSE_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(pulse_ext, CUDA, m) {
  m.impl("area_downscale_loss", &area_downscale_loss);
  m.impl("area_downscale_loss_backward", &area_downscale_loss_backward);
}
#endif

}  // namespace pulse_ext
