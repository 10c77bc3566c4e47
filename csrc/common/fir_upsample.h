// The [1,3,3,1] FIR filter that follows StyleGAN2's stride-2 transposed convolution (NVIDIA's
// conv2d_resample with up=2, k=3, padding=1): from a [2H+1, 2W+1] map to [2H, 2W], padding 1 on
// each side, gain 4. The 4x4 filter outer([1,3,3,1])/64 * 4 factors into two 1-D passes of taps/4.
#pragma once
#include "macros.h"

namespace pulse_ext {

template <typename T>
PULSE_HOST_DEVICE T fir_tap(int t) {
  return (t == 0 || t == 3) ? T(0.25) : T(0.75);
}

// out[p, q] = sum_{a,b} in[p + a - 1, q + b - 1] * tap(a) * tap(b), zero outside in (in: [hi, wi]).
template <typename T>
PULSE_HOST_DEVICE T fir_upsample_at(const T* in, int hi, int wi, int p, int q) {
  T acc = T(0);
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    int r = p + a - 1;
    if (r < 0 || r >= hi) continue;
    T row = T(0);
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      int c = q + b - 1;
      if (c < 0 || c >= wi) continue;
      row += in[r * wi + c] * fir_tap<T>(b);
    }
    acc += row * fir_tap<T>(a);
  }
  return acc;
}

// The adjoint: grad_in[r, c] = sum_{a,b} grad_out[r - a + 1, c - b + 1] * tap(a) * tap(b) (grad_out: [ho, wo]).
template <typename T>
PULSE_HOST_DEVICE T fir_upsample_adjoint_at(const T* grad_out, int ho, int wo, int r, int c) {
  T acc = T(0);
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    int p = r - a + 1;
    if (p < 0 || p >= ho) continue;
    T row = T(0);
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      int q = c - b + 1;
      if (q < 0 || q >= wo) continue;
      row += grad_out[p * wo + q] * fir_tap<T>(b);
    }
    acc += row * fir_tap<T>(a);
  }
  return acc;
}

}  // namespace pulse_ext
