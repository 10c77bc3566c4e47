// CPU kernels on channels-last (NHWC) tensors, see kernels.h. Each pixel's channels are contiguous,
// so every inner loop runs along C and vectorises; per-channel sums are kept as C-wide rows.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/fir_upsample.h"
#include "../kernels.h"
#include "cpu_common.h"

namespace pulse_ext::cpu {
namespace {

// `pixels` consecutive pixels of one sample: y = activation(x * demod + noise_term + bias).
template <typename T>
PULSE_CPU_MULTIVERSION void activation_pixels(const T* __restrict x, const T* __restrict demod, const T* __restrict bias,
                                              const T* __restrict noise_term, T* __restrict y, int64_t pixels,
                                              int64_t C, NoiseBiasActParams<T> p) {
  for (int64_t i = 0; i < pixels; ++i) {
    const T nt = noise_term ? noise_term[i] : T(0);
    for (int64_t c = 0; c < C; ++c) y[i * C + c] = noise_bias_act_forward(x[i * C + c], demod[c], nt, bias[c], p);
  }
}

// `pixels` consecutive pixels of the backward: grad_x, per-channel sums of gt and gt * x (added to
// bias_sum / demod_sum) and, per pixel, the channel sum of gt (noise_sum, may be nullptr). The channel
// sum is kept in kLanes independent partial sums: a single running sum is a serial floating-point
// chain the compiler may not reorder, which keeps the whole loop scalar.
template <typename T>
PULSE_CPU_MULTIVERSION void activation_grad_pixels(const T* __restrict grad, const T* __restrict y,
                                                   const T* __restrict x, const T* __restrict demod,
                                                   T* __restrict grad_x, T* __restrict bias_sum,
                                                   T* __restrict demod_sum, T* __restrict noise_sum, int64_t pixels,
                                                   int64_t C, NoiseBiasActParams<T> p) {
  for (int64_t i = 0; i < pixels; ++i) {
    const T* g = grad + i * C;
    const T* yy = y + i * C;
    const T* xx = x + i * C;
    T* gx = grad_x + i * C;
    T lanes[kLanes] = {};
    int64_t c = 0;
    for (; c + kLanes <= C; c += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const T gt = noise_bias_act_grad_preact(g[c + l], yy[c + l], p);
        gx[c + l] = gt * demod[c + l];
        bias_sum[c + l] += gt;
        demod_sum[c + l] += gt * xx[c + l];
        lanes[l] += gt;
      }
    }
    T pixel_sum = T(0);
    for (; c < C; ++c) {
      const T gt = noise_bias_act_grad_preact(g[c], yy[c], p);
      gx[c] = gt * demod[c];
      bias_sum[c] += gt;
      demod_sum[c] += gt * xx[c];
      pixel_sum += gt;
    }
    if (noise_sum) noise_sum[i] = pixel_sum + sum_lanes(lanes);
  }
}

// out = x * s over `pixels` pixels (s: the sample's C scales).
template <typename T>
PULSE_CPU_MULTIVERSION void scale_pixels(const T* __restrict x, const T* __restrict s, T* out, int64_t pixels, int64_t C) {
  for (int64_t i = 0; i < pixels; ++i)
    for (int64_t c = 0; c < C; ++c) out[i * C + c] = x[i * C + c] * s[c];
}

// grad_x = g * s and dot[c] += sum over the pixels of g * x.
template <typename T>
PULSE_CPU_MULTIVERSION void scale_grad_pixels(const T* __restrict g, const T* __restrict x, const T* __restrict s,
                                              T* __restrict grad_x, T* __restrict dot, int64_t pixels, int64_t C) {
  for (int64_t i = 0; i < pixels; ++i)
    for (int64_t c = 0; c < C; ++c) {
      grad_x[i * C + c] = g[i * C + c] * s[c];
      dot[c] += g[i * C + c] * x[i * C + c];
    }
}

// The [1,3,3,1] FIR of the up=2 layers is separable (common/fir_upsample.h), so on NHWC rows it is
// two passes of 4 taps over contiguous streams: a vertical one (a weighted sum of up to 4 rows) and a
// horizontal one (4 pixel-shifted copies of one row). Both directions use the same taps because the
// filter is symmetric: the forward reads source index i + t - 1 for tap t, its adjoint i + t - 2.

// dst[j] = sum_t tap(t) * rows[t][j] over the rows given (nullptr: outside the map), j in [0, len).
template <typename T>
PULSE_CPU_MULTIVERSION void fir_vertical(const T* const rows[4], T* __restrict dst, int64_t len) {
  std::fill(dst, dst + len, T(0));
  for (int t = 0; t < 4; ++t) {
    const T* __restrict src = rows[t];
    if (src == nullptr) continue;
    const T w = fir_tap<T>(t);
    for (int64_t j = 0; j < len; ++j) dst[j] += w * src[j];
  }
}

// dst[q*C + c] = sum_t tap(t) * src[(q + t + offset)*C + c] for q in [0, dst_pixels), source pixels
// outside [0, src_pixels) being zero.
template <typename T>
PULSE_CPU_MULTIVERSION void fir_horizontal(const T* __restrict src, int64_t src_pixels, T* __restrict dst,
                                           int64_t dst_pixels, int64_t C, int64_t offset) {
  // Pixels whose 4 taps all fall inside the source: one flat stream over [begin*C, end*C).
  const int64_t begin = std::min(dst_pixels, std::max<int64_t>(0, -offset));
  const int64_t end = std::max(begin, std::min(dst_pixels, src_pixels - 3 - offset));
  const T t0 = fir_tap<T>(0), t1 = fir_tap<T>(1), t2 = fir_tap<T>(2), t3 = fir_tap<T>(3);
  const T* s = src + offset * C;
  for (int64_t e = begin * C; e < end * C; ++e)
    dst[e] = t0 * s[e] + t1 * s[e + C] + t2 * s[e + 2 * C] + t3 * s[e + 3 * C];
  // The edge pixels, where some taps fall outside the source.
  const auto edge_pixel = [&](int64_t q) {
    T* d = dst + q * C;
    std::fill(d, d + C, T(0));
    for (int t = 0; t < 4; ++t) {
      const int64_t pixel = q + t + offset;
      if (pixel < 0 || pixel >= src_pixels) continue;
      const T w = fir_tap<T>(t);
      for (int64_t c = 0; c < C; ++c) d[c] += w * src[pixel * C + c];
    }
  };
  for (int64_t q = 0; q < begin; ++q) edge_pixel(q);
  for (int64_t q = end; q < dst_pixels; ++q) edge_pixel(q);
}

// Pixels per task for the reductions; per-(task, channel) sums are added in a fixed order.
inline int64_t chunk_for(int64_t HW) { return std::min<int64_t>(HW, 1024); }

template <typename T>
void reduce_chunks(const std::vector<T>& partial, int64_t N, int64_t chunks, int64_t C, T* out) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0;
      for (int64_t k = 0; k < chunks; ++k) sum += partial[(n * chunks + k) * C + c];
      out[n * C + c] = T(sum);
    }
}

}  // namespace

template <typename T>
void noise_bias_act_forward_nhwc(const NoiseBiasActArgs<T>& a, T* y) {
  const T strength = a.noise_strength ? *a.noise_strength : T(1);
  const int64_t C = a.C, HW = a.HW, chunk = chunk_for(HW), chunks = (HW + chunk - 1) / chunk;
  at::parallel_for(0, a.N * chunks, grain_for(chunk * C), [&](int64_t begin, int64_t end) {
    std::vector<T> ones(C, T(1)), zeros(C, T(0)), noise_term(chunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, lo = (task % chunks) * chunk, len = std::min(HW, lo + chunk) - lo;
      if (a.noise) {
        const T* noise = a.noise + (a.noise_batch == 1 ? 0 : n) * HW + lo;
        for (int64_t i = 0; i < len; ++i) noise_term[i] = strength * noise[i];
      }
      const int64_t e = (n * HW + lo) * C;
      activation_pixels(a.x + e, a.demod ? a.demod + n * C : ones.data(), a.bias ? a.bias : zeros.data(),
                        a.noise ? noise_term.data() : nullptr, y + e, len, C, a.p);
    }
  });
}

template <typename T>
void noise_bias_act_backward_nhwc(const NoiseBiasActArgs<T>& a, const T* grad, const T* y, const NoiseBiasActGrads<T>& g) {
  const int64_t C = a.C, HW = a.HW, chunk = chunk_for(HW), chunks = (HW + chunk - 1) / chunk;
  std::vector<T> bias_partial(a.N * chunks * C, T(0)), demod_partial(a.N * chunks * C, T(0));
  at::parallel_for(0, a.N * chunks, grain_for(chunk * C), [&](int64_t begin, int64_t end) {
    std::vector<T> ones(C, T(1));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, lo = (task % chunks) * chunk, hi = std::min(HW, lo + chunk);
      const T* demod = a.demod ? a.demod + n * C : ones.data();
      const int64_t e = (n * HW + lo) * C;
      activation_grad_pixels(grad + e, y + e, a.x + e, demod, g.grad_x + e, bias_partial.data() + task * C,
                             demod_partial.data() + task * C, a.noise ? g.noise_channel_sum + n * HW + lo : nullptr,
                             hi - lo, C, a.p);
    }
  });
  reduce_chunks(bias_partial, a.N, chunks, C, g.bias_partial);
  if (a.demod) reduce_chunks(demod_partial, a.N, chunks, C, g.demod_partial);
}

template <typename T>
void scale_channels_nhwc(const T* x, const T* scale, T* out, int64_t N, int64_t C, int64_t HW) {
  const int64_t chunk = chunk_for(HW), chunks = (HW + chunk - 1) / chunk;
  at::parallel_for(0, N * chunks, grain_for(chunk * C), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, lo = (task % chunks) * chunk, len = std::min(HW, lo + chunk) - lo;
      const int64_t e = (n * HW + lo) * C;
      scale_pixels(x + e, scale + n * C, out + e, len, C);
    }
  });
}

template <typename T>
void scale_channels_backward_nhwc(const T* grad, const T* x, const T* scale, T* grad_x, T* grad_s, int64_t N, int64_t C,
                                  int64_t HW) {
  const int64_t chunk = chunk_for(HW), chunks = (HW + chunk - 1) / chunk;
  std::vector<T> partial(N * chunks * C, T(0));
  at::parallel_for(0, N * chunks, grain_for(chunk * C), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, lo = (task % chunks) * chunk, hi = std::min(HW, lo + chunk);
      const int64_t e = (n * HW + lo) * C;
      scale_grad_pixels(grad + e, x + e, scale + n * C, grad_x + e, partial.data() + task * C, hi - lo, C);
    }
  });
  reduce_chunks(partial, N, chunks, C, grad_s);
}

template <typename T>
void fir_upsample_forward_nhwc(const T* in, const T* scale, T* out, int64_t N, int64_t C, int64_t hi, int64_t wi) {
  const int64_t ho = hi - 1, wo = wi - 1;
  at::parallel_for(0, N * ho, grain_for(wo * C * 8), [&](int64_t begin, int64_t end) {
    std::vector<T> column(wi * C);  // the vertical pass of one output row, at the input's width
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / ho, p = row % ho;
      const T* rows[4];
      for (int t = 0; t < 4; ++t) {
        const int64_t r = p + t - 1;
        rows[t] = r >= 0 && r < hi ? in + (n * hi + r) * wi * C : nullptr;
      }
      T* o = out + row * wo * C;
      fir_vertical(rows, column.data(), wi * C);
      fir_horizontal(column.data(), wi, o, wo, C, int64_t(-1));
      if (scale) scale_pixels(o, scale + n * C, o, wo, C);
    }
  });
}

template <typename T>
void fir_upsample_backward_nhwc(const T* grad_out, T* grad_in, int64_t N, int64_t C, int64_t hi, int64_t wi) {
  const int64_t ho = hi - 1, wo = wi - 1;
  at::parallel_for(0, N * hi, grain_for(wi * C * 8), [&](int64_t begin, int64_t end) {
    std::vector<T> column(wo * C);  // the adjoint vertical pass of one input row, at the output's width
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / hi, r = row % hi;
      const T* rows[4];
      for (int t = 0; t < 4; ++t) {
        const int64_t p = r + t - 2;
        rows[t] = p >= 0 && p < ho ? grad_out + (n * ho + p) * wo * C : nullptr;
      }
      fir_vertical(rows, column.data(), wo * C);
      fir_horizontal(column.data(), wo, grad_in + row * wi * C, wi, C, int64_t(-2));
    }
  });
}

#define INSTANTIATE(T)                                                                                          \
  template void noise_bias_act_forward_nhwc<T>(const NoiseBiasActArgs<T>&, T*);                                \
  template void noise_bias_act_backward_nhwc<T>(const NoiseBiasActArgs<T>&, const T*, const T*,                \
                                                const NoiseBiasActGrads<T>&);                                  \
  template void scale_channels_nhwc<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);                     \
  template void scale_channels_backward_nhwc<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t); \
  template void fir_upsample_forward_nhwc<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);      \
  template void fir_upsample_backward_nhwc<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cpu
