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

// The per-sample weight of a 1x1 modulated convolution: wn[o, i] = weight[o, i] * s[i] * d[o] (d may be
// nullptr: 1), [Cout, Cin].
template <typename T>
void pointwise_sample_weight(const T* weight, const T* s, const T* d, T* wn, int64_t Cin, int64_t Cout) {
  for (int64_t o = 0; o < Cout; ++o)
    for (int64_t i = 0; i < Cin; ++i) wn[o * Cin + i] = weight[o * Cin + i] * s[i] * (d ? d[o] : T(1));
}

// y[p, o] = sum_i x[p, i] * wn[o, i] over `pixels` pixels: a dot product along the contiguous channels
// per output channel, in kLanes partial sums (see sum_lanes).
template <typename T>
PULSE_CPU_MULTIVERSION void pointwise_pixels(const T* __restrict x, const T* __restrict wn, T* __restrict y,
                                             int64_t pixels, int64_t Cin, int64_t Cout) {
  for (int64_t p = 0; p < pixels; ++p) {
    const T* xp = x + p * Cin;
    for (int64_t o = 0; o < Cout; ++o) {
      const T* w = wn + o * Cin;
      T lanes[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= Cin; i += kLanes)
        for (int l = 0; l < kLanes; ++l) lanes[l] += xp[i + l] * w[i + l];
      T tail = T(0);
      for (; i < Cin; ++i) tail += xp[i] * w[i];
      y[p * Cout + o] = sum_lanes(lanes) + tail;
    }
  }
}

// grad_x[p, i] = sum_o g[p, o] * wn[o, i] and xg[o, i] += sum over the pixels of g[p, o] * x[p, i].
template <typename T>
PULSE_CPU_MULTIVERSION void pointwise_grad_pixels(const T* __restrict g, const T* __restrict x, const T* __restrict wn,
                                                  T* __restrict grad_x, T* __restrict xg, int64_t pixels, int64_t Cin,
                                                  int64_t Cout) {
  for (int64_t p = 0; p < pixels; ++p) {
    const T* gp = g + p * Cout;
    const T* xp = x + p * Cin;
    T* gx = grad_x + p * Cin;
    for (int64_t i = 0; i < Cin; ++i) gx[i] = gp[0] * wn[i];
    for (int64_t o = 1; o < Cout; ++o) {
      const T go = gp[o];
      const T* w = wn + o * Cin;
      for (int64_t i = 0; i < Cin; ++i) gx[i] += go * w[i];
    }
    for (int64_t o = 0; o < Cout; ++o) {
      const T go = gp[o];
      T* acc = xg + o * Cin;
      for (int64_t i = 0; i < Cin; ++i) acc[i] += go * xp[i];
    }
  }
}

// The skip path's 2x [1,3,3,1] upsampling, separable and polyphase: along each axis output 2q is
// 3/4 x[q] + 1/4 x[q-1] and output 2q+1 is 3/4 x[q] + 1/4 x[q+1] (the gain-2 taps [1,3,3,1]/4 of a
// stride-2 transposed convolution with padding 1); its adjoint gathers, for input q, 3/4 of outputs
// 2q and 2q+1 and 1/4 of outputs 2q-1 and 2q+2. Samples outside the map are zero.
template <typename T>
PULSE_CPU_MULTIVERSION void upsample_combine(const T* __restrict near, const T* __restrict far, T* __restrict dst,
                                             int64_t len) {
  for (int64_t j = 0; j < len; ++j) dst[j] = T(0.75) * near[j] + (far ? T(0.25) * far[j] : T(0));
}

// One row of C-channel pixels, [w, C] -> [2w, C] along the row.
template <typename T>
PULSE_CPU_MULTIVERSION void upsample_row(const T* __restrict src, T* __restrict dst, int64_t w, int64_t C) {
  for (int64_t p = 0; p < w; ++p) {
    const T* here = src + p * C;
    const T* left = p > 0 ? here - C : nullptr;
    const T* right = p + 1 < w ? here + C : nullptr;
    T* even = dst + 2 * p * C;
    T* odd = even + C;
    for (int64_t c = 0; c < C; ++c) {
      even[c] = T(0.75) * here[c] + (left ? T(0.25) * left[c] : T(0));
      odd[c] = T(0.75) * here[c] + (right ? T(0.25) * right[c] : T(0));
    }
  }
}

// Its adjoint along a row, [2w, C] -> [w, C].
template <typename T>
PULSE_CPU_MULTIVERSION void upsample_row_adjoint(const T* __restrict src, T* __restrict dst, int64_t w, int64_t C) {
  for (int64_t p = 0; p < w; ++p) {
    const T* even = src + 2 * p * C;
    const T* odd = even + C;
    const T* before = p > 0 ? even - C : nullptr;       // output 2p - 1
    const T* after = p + 1 < w ? odd + C : nullptr;     // output 2p + 2
    T* d = dst + p * C;
    for (int64_t c = 0; c < C; ++c)
      d[c] = T(0.75) * (even[c] + odd[c]) + T(0.25) * ((before ? before[c] : T(0)) + (after ? after[c] : T(0)));
  }
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

// fn(task, n, lo, len, wn) over the (sample, pixel chunk) tasks of a 1x1 modulated convolution, in
// parallel, with wn the sample's weight (pointwise_sample_weight, made once per sample and thread).
template <typename T, typename Fn>
void for_each_pointwise_task(const T* weight, const T* styles, const T* demod, int64_t N, int64_t HW, int64_t Cin,
                             int64_t Cout, const Fn& fn) {
  const int64_t chunk = chunk_for(HW), chunks = (HW + chunk - 1) / chunk;
  at::parallel_for(0, N * chunks, grain_for(chunk * Cin), [&](int64_t begin, int64_t end) {
    std::vector<T> wn(Cout * Cin);
    int64_t sample = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, lo = (task % chunks) * chunk, len = std::min(HW, lo + chunk) - lo;
      if (n != sample) {
        pointwise_sample_weight(weight, styles + n * Cin, demod ? demod + n * Cout : nullptr, wn.data(), Cin, Cout);
        sample = n;
      }
      fn(task, n, lo, len, wn.data());
    }
  });
}

template <typename T>
void pointwise_modconv_forward_nhwc(const T* x, const T* weight, const T* styles, const T* demod, T* y, int64_t N,
                                    int64_t HW, int64_t Cin, int64_t Cout) {
  for_each_pointwise_task(weight, styles, demod, N, HW, Cin, Cout,
                          [&](int64_t, int64_t n, int64_t lo, int64_t len, const T* wn) {
                            pointwise_pixels(x + (n * HW + lo) * Cin, wn, y + (n * HW + lo) * Cout, len, Cin, Cout);
                          });
}

template <typename T>
void pointwise_modconv_backward_nhwc(const T* grad, const T* x, const T* weight, const T* styles, const T* demod,
                                     T* grad_x, T* grad_styles, int64_t N, int64_t HW, int64_t Cin, int64_t Cout) {
  const int64_t chunk = chunk_for(HW), chunks = (HW + chunk - 1) / chunk;
  std::vector<T> partial(N * chunks * Cout * Cin, T(0));  // per task: sum over its pixels of g[p, o] * x[p, i]
  for_each_pointwise_task(weight, styles, demod, N, HW, Cin, Cout,
                          [&](int64_t task, int64_t n, int64_t lo, int64_t len, const T* wn) {
                            pointwise_grad_pixels(grad + (n * HW + lo) * Cout, x + (n * HW + lo) * Cin, wn,
                                                  grad_x + (n * HW + lo) * Cin, partial.data() + task * Cout * Cin,
                                                  len, Cin, Cout);
                          });
  // grad_s[n, i] = sum_o weight[o, i] * d[n, o] * sum over the tasks of n (fixed order) of their sums.
  std::vector<T> xg(N * Cout * Cin);
  reduce_chunks(partial, N, chunks, Cout * Cin, xg.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < Cin; ++i) {
      double sum = 0;
      for (int64_t o = 0; o < Cout; ++o)
        sum += double(weight[o * Cin + i]) * (demod ? demod[n * Cout + o] : T(1)) * xg[(n * Cout + o) * Cin + i];
      grad_styles[n * Cin + i] = T(sum);
    }
}

template <typename T>
void upsample2d_nhwc(const T* x, T* y, int64_t N, int64_t C, int64_t H, int64_t W) {
  const int64_t row = W * C;  // one input row
  at::parallel_for(0, N * 2 * H, grain_for(4 * row), [&](int64_t begin, int64_t end) {
    std::vector<T> combined(row);
    for (int64_t out_row = begin; out_row < end; ++out_row) {
      const int64_t n = out_row / (2 * H), r = out_row % (2 * H), q = r / 2;
      const int64_t other = r % 2 == 0 ? q - 1 : q + 1;  // the row weighted 1/4
      const T* base = x + n * H * row;
      upsample_combine(base + q * row, other >= 0 && other < H ? base + other * row : nullptr, combined.data(), row);
      upsample_row(combined.data(), y + out_row * 2 * row, W, C);
    }
  });
}

template <typename T>
void upsample2d_adjoint_nhwc(const T* grad, T* grad_x, int64_t N, int64_t C, int64_t H, int64_t W) {
  const int64_t out_row = 2 * W * C;  // one row of grad
  at::parallel_for(0, N * H, grain_for(4 * out_row), [&](int64_t begin, int64_t end) {
    std::vector<T> pair(out_row), combined(out_row);
    for (int64_t in_row = begin; in_row < end; ++in_row) {
      const int64_t n = in_row / H, q = in_row % H;
      const T* base = grad + n * 2 * H * out_row;
      const T* even = base + 2 * q * out_row;
      const T* odd = even + out_row;
      for (int64_t j = 0; j < out_row; ++j) pair[j] = even[j] + odd[j];
      const T* before = q > 0 ? even - out_row : nullptr;       // grad row 2q - 1
      const T* after = q + 1 < H ? odd + out_row : nullptr;     // grad row 2q + 2
      for (int64_t j = 0; j < out_row; ++j)
        combined[j] = T(0.75) * pair[j] + T(0.25) * ((before ? before[j] : T(0)) + (after ? after[j] : T(0)));
      upsample_row_adjoint(combined.data(), grad_x + in_row * W * C, W, C);
    }
  });
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
  template void pointwise_modconv_forward_nhwc<T>(const T*, const T*, const T*, const T*, T*, int64_t, int64_t,  \
                                                  int64_t, int64_t);                                          \
  template void pointwise_modconv_backward_nhwc<T>(const T*, const T*, const T*, const T*, const T*, T*, T*,    \
                                                   int64_t, int64_t, int64_t, int64_t);                       \
  template void upsample2d_nhwc<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t);                          \
  template void upsample2d_adjoint_nhwc<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t);                  \
  template void fir_upsample_forward_nhwc<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);      \
  template void fir_upsample_backward_nhwc<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cpu
