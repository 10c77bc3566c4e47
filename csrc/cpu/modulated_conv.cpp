// CPU kernels around the modulated convolution's GEMM: style scaling, demodulation, FIR upsampling.
#include <ATen/Parallel.h>

#include "../common/fir_upsample.h"
#include "../kernels.h"

namespace pulse_ext::cpu {

template <typename T>
void scale_channels(const T* x, const T* scale, T* out, int64_t N, int64_t C, int64_t HW) {
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T s = scale[plane];
      const T* in = x + plane * HW;
      T* o = out + plane * HW;
      for (int64_t i = 0; i < HW; ++i) o[i] = in[i] * s;
    }
  });
}

template <typename T>
void scale_channels_backward(const T* grad, const T* x, const T* scale, T* grad_x, T* grad_s, int64_t N, int64_t C,
                             int64_t HW) {
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T s = scale[plane];
      const T* g = grad + plane * HW;
      const T* in = x + plane * HW;
      T* gx = grad_x + plane * HW;
      double acc = 0;
      for (int64_t i = 0; i < HW; ++i) {
        gx[i] = g[i] * s;
        acc += double(g[i]) * in[i];
      }
      grad_s[plane] = T(acc);
    }
  });
}

template <typename T>
void demod_backward(const T* grad, const T* y, const T* demod, T* grad_pre, T* grad_demod, int64_t N, int64_t C,
                    int64_t HW) {
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T d = demod[plane];
      const T* g = grad + plane * HW;
      const T* out = y + plane * HW;
      T* gp = grad_pre + plane * HW;
      double acc = 0;
      for (int64_t i = 0; i < HW; ++i) {
        gp[i] = g[i] * d;
        acc += double(g[i]) * out[i];
      }
      grad_demod[plane] = T(acc / double(d));
    }
  });
}

template <typename T>
void fir_upsample_forward(const T* in, const T* scale, T* out, int64_t planes, int64_t hi, int64_t wi) {
  const int64_t ho = hi - 1, wo = wi - 1;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T s = scale ? scale[plane] : T(1);
      const T* src = in + plane * hi * wi;
      T* dst = out + plane * ho * wo;
      for (int64_t p = 0; p < ho; ++p)
        for (int64_t q = 0; q < wo; ++q) dst[p * wo + q] = s * fir_upsample_at(src, int(hi), int(wi), int(p), int(q));
    }
  });
}

template <typename T>
void fir_upsample_backward(const T* grad_out, T* grad_in, int64_t planes, int64_t hi, int64_t wi) {
  const int64_t ho = hi - 1, wo = wi - 1;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* src = grad_out + plane * ho * wo;
      T* dst = grad_in + plane * hi * wi;
      for (int64_t r = 0; r < hi; ++r)
        for (int64_t c = 0; c < wi; ++c)
          dst[r * wi + c] = fir_upsample_adjoint_at(src, int(ho), int(wo), int(r), int(c));
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
