// CPU kernels around the modulated convolution's GEMM: style scaling, demodulation, FIR upsampling.
#include <ATen/Parallel.h>

#include <vector>

#include "../common/fir_upsample.h"
#include "../kernels.h"
#include "cpu_common.h"

namespace pulse_ext::cpu {
namespace {

// out = a * s; returns sum(a * b). The two passes the style/demod backward needs, fused in one loop.
template <typename T>
PULSE_CPU_MULTIVERSION T scale_and_dot_row(const T* __restrict a, const T* __restrict b, T* __restrict out, int64_t len,
                                           T s) {
  T acc = T(0);
  for (int64_t i = 0; i < len; ++i) {
    out[i] = a[i] * s;
    acc += a[i] * b[i];
  }
  return acc;
}

template <typename T>
PULSE_CPU_MULTIVERSION void scale_row(const T* __restrict in, T* out, int64_t len, T s) {
  for (int64_t i = 0; i < len; ++i) out[i] = in[i] * s;
}

}  // namespace

template <typename T>
void scale_channels(const T* x, const T* scale, T* out, int64_t N, int64_t C, int64_t HW) {
  at::parallel_for(0, N * C, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scale_row(x + plane * HW, out + plane * HW, HW, scale[plane]);
    }
  });
}

template <typename T>
void scale_channels_backward(const T* grad, const T* x, const T* scale, T* grad_x, T* grad_s, int64_t N, int64_t C,
                             int64_t HW) {
  at::parallel_for(0, N * C, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      grad_s[plane] = scale_and_dot_row(grad + plane * HW, x + plane * HW, grad_x + plane * HW, HW, scale[plane]);
    }
  });
}

template <typename T>
void demod_backward(const T* grad, const T* y, const T* demod, T* grad_pre, T* grad_demod, int64_t N, int64_t C,
                    int64_t HW) {
  at::parallel_for(0, N * C, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T d = demod[plane];
      grad_demod[plane] = scale_and_dot_row(grad + plane * HW, y + plane * HW, grad_pre + plane * HW, HW, d) / d;
    }
  });
}

// The FIR filter is separable: a horizontal pass into a row buffer, then a vertical pass over whole
// rows; the interior of each pass is a plain 4-tap stencil that vectorises, edges use the shared
// bounds-checked math.
template <typename T>
PULSE_CPU_MULTIVERSION void fir_horizontal_row(const T* __restrict in, T* __restrict out, int64_t wi) {
  const int64_t wo = wi - 1;
  out[0] = fir_tap<T>(1) * in[0] + fir_tap<T>(2) * in[1] + fir_tap<T>(3) * in[2];
  for (int64_t q = 1; q < wo - 2; ++q)
    out[q] = fir_tap<T>(0) * in[q - 1] + fir_tap<T>(1) * in[q] + fir_tap<T>(2) * in[q + 1] + fir_tap<T>(3) * in[q + 2];
  for (int64_t q = std::max<int64_t>(1, wo - 2); q < wo; ++q) {
    T acc = T(0);
    for (int b = 0; b < 4; ++b) {
      const int64_t c = q + b - 1;
      if (c >= 0 && c < wi) acc += fir_tap<T>(b) * in[c];
    }
    out[q] = acc;
  }
}

// out = scale * sum over the (up to 4) valid rows of tap * row; the adjoint uses it too.
template <typename T>
PULSE_CPU_MULTIVERSION void fir_vertical_row(const T* r0, const T* r1, const T* r2, const T* r3, T* __restrict out,
                                             int64_t len, T scale) {
  const T t0 = r0 ? fir_tap<T>(0) : T(0), t1 = r1 ? fir_tap<T>(1) : T(0);
  const T t2 = r2 ? fir_tap<T>(2) : T(0), t3 = r3 ? fir_tap<T>(3) : T(0);
  const T* z = r0 ? r0 : (r1 ? r1 : (r2 ? r2 : r3));  // any valid row stands in for a missing one (tap 0)
  r0 = r0 ? r0 : z;
  r1 = r1 ? r1 : z;
  r2 = r2 ? r2 : z;
  r3 = r3 ? r3 : z;
  for (int64_t i = 0; i < len; ++i) out[i] = scale * (t0 * r0[i] + t1 * r1[i] + t2 * r2[i] + t3 * r3[i]);
}

template <typename T>
void fir_upsample_forward(const T* in, const T* scale, T* out, int64_t planes, int64_t hi, int64_t wi) {
  const int64_t ho = hi - 1, wo = wi - 1;
  at::parallel_for(0, planes, grain_for(hi * wi * 4), [&](int64_t begin, int64_t end) {
    std::vector<T> rows(hi * wo);
    for (int64_t plane = begin; plane < end; ++plane) {
      const T s = scale ? scale[plane] : T(1);
      const T* src = in + plane * hi * wi;
      for (int64_t r = 0; r < hi; ++r) fir_horizontal_row(src + r * wi, rows.data() + r * wo, wi);
      T* dst = out + plane * ho * wo;
      for (int64_t p = 0; p < ho; ++p) {
        const T* tap_rows[4];
        for (int a = 0; a < 4; ++a) {
          const int64_t r = p + a - 1;
          tap_rows[a] = (r >= 0 && r < hi) ? rows.data() + r * wo : nullptr;
        }
        fir_vertical_row(tap_rows[0], tap_rows[1], tap_rows[2], tap_rows[3], dst + p * wo, wo, s);
      }
    }
  });
}

// The adjoint runs the transposed stencil: vertical first (each input row r gathers output rows
// r - a + 1), then horizontally (each input column c gathers output columns c - b + 1).
template <typename T>
void fir_upsample_backward(const T* grad_out, T* grad_in, int64_t planes, int64_t hi, int64_t wi) {
  const int64_t ho = hi - 1, wo = wi - 1;
  at::parallel_for(0, planes, grain_for(hi * wi * 4), [&](int64_t begin, int64_t end) {
    std::vector<T> rows(hi * wo);
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* src = grad_out + plane * ho * wo;
      for (int64_t r = 0; r < hi; ++r) {
        const T* tap_rows[4];
        for (int a = 0; a < 4; ++a) {
          const int64_t p = r - a + 1;
          tap_rows[a] = (p >= 0 && p < ho) ? src + p * wo : nullptr;
        }
        fir_vertical_row(tap_rows[0], tap_rows[1], tap_rows[2], tap_rows[3], rows.data() + r * wo, wo, T(1));
      }
      T* dst = grad_in + plane * hi * wi;
      for (int64_t r = 0; r < hi; ++r)
        for (int64_t c = 0; c < wi; ++c) {
          T acc = T(0);
          for (int b = 0; b < 4; ++b) {
            const int64_t q = c - b + 1;
            if (q >= 0 && q < wo) acc += fir_tap<T>(b) * rows[r * wo + q];
          }
          dst[r * wi + c] = acc;
        }
    }
  });
}

#define INSTANTIATE(T)                                                                                     \
  template void scale_channels<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);                      \
  template void scale_channels_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t); \
  template void demod_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t);          \
  template void fir_upsample_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);                \
  template void fir_upsample_backward<T>(const T*, T*, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cpu
