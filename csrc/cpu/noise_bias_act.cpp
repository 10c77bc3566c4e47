// CPU kernels of noise_bias_act (see common/noise_bias_act.h for the element math).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../kernels.h"
#include "cpu_common.h"

namespace pulse_ext::cpu {
namespace {

// One row of the forward; noise may be nullptr. Parameters are passed by value so the compiler
// knows the stores cannot change them (that is what lets the loop vectorise).
template <typename T>
PULSE_CPU_MULTIVERSION void forward_row(const T* __restrict x, const T* __restrict noise, T* __restrict y, int64_t len,
                                        T demod, T strength, T bias, NoiseBiasActParams<T> p) {
  if (noise) {
    for (int64_t i = 0; i < len; ++i) y[i] = noise_bias_act_forward(x[i], demod, strength * noise[i], bias, p);
  } else {
    for (int64_t i = 0; i < len; ++i) y[i] = noise_bias_act_forward(x[i], demod, T(0), bias, p);
  }
}

// One row of the backward: writes grad_x, adds gt into noise_sum (kNoise) and returns the row's sums
// of gt and gt * x (kDemod). The flags are template parameters so each variant is a branch-free loop,
// and the sums are kept in kLanes independent partial sums so it vectorises (see cpu_common.h).
template <bool kDemod, bool kNoise, typename T>
PULSE_CPU_MULTIVERSION void backward_row(const T* __restrict grad, const T* __restrict y, const T* __restrict x,
                                         T* __restrict grad_x, T* __restrict noise_sum, int64_t len, T demod,
                                         NoiseBiasActParams<T> p, double* bias_sum, double* demod_sum) {
  T b[kLanes] = {}, d[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T gt = noise_bias_act_grad_preact(grad[i + l], y[i + l], p);
      grad_x[i + l] = gt * demod;
      b[l] += gt;
      if constexpr (kDemod) d[l] += gt * x[i + l];
      if constexpr (kNoise) noise_sum[i + l] += gt;
    }
  }
  T b_tail = T(0), d_tail = T(0);
  for (; i < len; ++i) {
    const T gt = noise_bias_act_grad_preact(grad[i], y[i], p);
    grad_x[i] = gt * demod;
    b_tail += gt;
    if constexpr (kDemod) d_tail += gt * x[i];
    if constexpr (kNoise) noise_sum[i] += gt;
  }
  *bias_sum = b_tail + sum_lanes(b);
  *demod_sum = d_tail + sum_lanes(d);
}

// backward_row with the variant chosen at run time (x: nullptr without demodulation, noise_sum: without noise).
template <typename T>
void backward_row_any(const T* grad, const T* y, const T* x, T* grad_x, T* noise_sum, int64_t len, T demod,
                      NoiseBiasActParams<T> p, double* bias_sum, double* demod_sum) {
  if (x && noise_sum)
    backward_row<true, true>(grad, y, x, grad_x, noise_sum, len, demod, p, bias_sum, demod_sum);
  else if (x)
    backward_row<true, false>(grad, y, x, grad_x, noise_sum, len, demod, p, bias_sum, demod_sum);
  else if (noise_sum)
    backward_row<false, true>(grad, y, x, grad_x, noise_sum, len, demod, p, bias_sum, demod_sum);
  else
    backward_row<false, false>(grad, y, x, grad_x, noise_sum, len, demod, p, bias_sum, demod_sum);
}

}  // namespace

template <typename T>
void noise_bias_act_forward(const NoiseBiasActArgs<T>& a, T* y) {
  const T strength = a.noise_strength ? *a.noise_strength : T(1);
  at::parallel_for(0, a.N * a.C, grain_for(a.HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / a.C, c = plane % a.C;
      const T* noise = a.noise ? a.noise + (a.noise_batch == 1 ? 0 : n) * a.HW : nullptr;
      forward_row(a.x + plane * a.HW, noise, y + plane * a.HW, a.HW, a.demod ? a.demod[plane] : T(1), strength,
                  a.bias ? a.bias[c] : T(0), a.p);
    }
  });
}

// One pass over grad, y (and x when demodulated). Work is split into (sample, pixel-chunk) tasks
// that loop over all channels, so the channel sum for the noise gradient needs no second pass;
// per-plane sums are kept per chunk and added up at the end.
template <typename T>
void noise_bias_act_backward(const NoiseBiasActArgs<T>& a, const T* grad, const T* y, const NoiseBiasActGrads<T>& g) {
  const int64_t chunk = std::min<int64_t>(a.HW, 4096);
  const int64_t chunks = (a.HW + chunk - 1) / chunk;
  std::vector<double> demod_acc(a.N * chunks * a.C), bias_acc(a.N * chunks * a.C);
  at::parallel_for(0, a.N * chunks, grain_for(chunk * a.C), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, k = task % chunks;
      const int64_t lo = k * chunk, len = std::min(chunk, a.HW - lo);
      T* noise_sum = a.noise ? g.noise_channel_sum + n * a.HW + lo : nullptr;
      if (noise_sum) std::fill(noise_sum, noise_sum + len, T(0));
      for (int64_t c = 0; c < a.C; ++c) {
        const int64_t offset = (n * a.C + c) * a.HW + lo;
        backward_row_any(grad + offset, y + offset, a.demod ? a.x + offset : nullptr, g.grad_x + offset, noise_sum, len,
                     a.demod ? a.demod[n * a.C + c] : T(1), a.p, &bias_acc[task * a.C + c],
                     &demod_acc[task * a.C + c]);
      }
    }
  });
  for (int64_t n = 0; n < a.N; ++n) {
    for (int64_t c = 0; c < a.C; ++c) {
      double b = 0, d = 0;
      for (int64_t k = 0; k < chunks; ++k) {
        b += bias_acc[(n * chunks + k) * a.C + c];
        d += demod_acc[(n * chunks + k) * a.C + c];
      }
      g.bias_partial[n * a.C + c] = T(b);
      if (a.demod) g.demod_partial[n * a.C + c] = T(d);
    }
  }
}

template <typename T>
void noise_bias_act_reduce_grads(const NoiseBiasActArgs<T>& a, const T* bias_partial, const T* noise_channel_sum,
                                 T* grad_bias, T* grad_noise, T* grad_strength) {
  // Every loop streams its inputs in memory order (sample by sample) into double accumulators.
  if (grad_bias) {
    std::vector<double> sum(a.C, 0.0);
    for (int64_t n = 0; n < a.N; ++n)
      for (int64_t c = 0; c < a.C; ++c) sum[c] += bias_partial[n * a.C + c];
    for (int64_t c = 0; c < a.C; ++c) grad_bias[c] = T(sum[c]);
  }
  if (!a.noise) return;
  const T strength = a.noise_strength ? *a.noise_strength : T(1);
  const int64_t HW = a.HW;
  if (grad_noise) {
    // d loss / d noise = strength * (sum over channels of gt), summed over samples for a shared map.
    if (a.noise_batch == 1) {
      std::vector<double> sum(HW, 0.0);
      for (int64_t n = 0; n < a.N; ++n)
        for (int64_t p = 0; p < HW; ++p) sum[p] += noise_channel_sum[n * HW + p];
      for (int64_t p = 0; p < HW; ++p) grad_noise[p] = T(sum[p]) * strength;
    } else {
      for (int64_t e = 0; e < a.N * HW; ++e) grad_noise[e] = noise_channel_sum[e] * strength;
    }
  }
  if (grad_strength) {
    // d loss / d strength = sum over every element of gt * noise = sum over (n, pixel) of noise * channel sum.
    double sum = 0;
    for (int64_t n = 0; n < a.N; ++n) {
      const T* noise = a.noise + (a.noise_batch == 1 ? 0 : n) * HW;
      for (int64_t p = 0; p < HW; ++p) sum += double(noise_channel_sum[n * HW + p]) * noise[p];
    }
    *grad_strength = T(sum);
  }
}

#define INSTANTIATE(T)                                                                       \
  template void noise_bias_act_forward<T>(const NoiseBiasActArgs<T>&, T*);                 \
  template void noise_bias_act_backward<T>(const NoiseBiasActArgs<T>&, const T*, const T*, \
                                           const NoiseBiasActGrads<T>&);                   \
  template void noise_bias_act_reduce_grads<T>(const NoiseBiasActArgs<T>&, const T*, const T*, T*, T*, T*);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cpu
