// Gradient coefficients of the area-downscale loss, shared by the CPU and CUDA kernels.
#pragma once
#include "macros.h"

namespace pulse_ext {

// d/d img of  g2 * mean((ds - t)^2) + g1 * mean(|ds - t|)  at one pixel whose block has difference diff;
// scale2 = 2 * g2 / (M * fh * fw), scale1 = g1 / (M * fh * fw), M = C * h * w.
template <typename T>
PULSE_HOST_DEVICE T area_downscale_loss_grad(T diff, T scale2, T scale1) {
  T sign = diff > T(0) ? T(1) : (diff < T(0) ? T(-1) : T(0));
  return scale2 * diff + scale1 * sign;
}

}  // namespace pulse_ext
