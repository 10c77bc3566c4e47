// CPU kernels of noise_bias_act (see common/noise_bias_act.h for the element math).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../kernels.h"

namespace pulse_ext::cpu {

template <typename T>
void noise_bias_act_forward(const NoiseBiasActArgs<T>& a, T* y) {
  const T strength = a.noise_strength ? *a.noise_strength : T(1);
  at::parallel_for(0, a.N * a.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / a.C, c = plane % a.C;
      const T d = a.demod ? a.demod[plane] : T(1);
      const T b = a.bias ? a.bias[c] : T(0);
      const T* x = a.x + plane * a.HW;
      T* out = y + plane * a.HW;
      if (a.noise) {
        const T* noise = a.noise + (a.noise_batch == 1 ? 0 : n) * a.HW;
        for (int64_t i = 0; i < a.HW; ++i)
          out[i] = noise_bias_act_forward(x[i], d, strength * noise[i], b, a.p);
      } else {
        for (int64_t i = 0; i < a.HW; ++i) out[i] = noise_bias_act_forward(x[i], d, T(0), b, a.p);
      }
    }
  });
}

// One pass over grad, y (and x when demodulated). Work is split into (sample, pixel-chunk) tasks
// that loop over all channels, so the channel sum for the noise gradient needs no second pass;
// per-plane sums are kept per chunk in double and added up at the end.
template <typename T>
void noise_bias_act_backward(const NoiseBiasActArgs<T>& a, const T* grad, const T* y, const NoiseBiasActGrads<T>& g) {
  const int64_t chunk = std::max<int64_t>(256, (a.HW + 7) / 8);
  const int64_t chunks = (a.HW + chunk - 1) / chunk;
  std::vector<double> demod_acc(a.demod ? a.N * chunks * a.C : 0), bias_acc(a.N * chunks * a.C);
  at::parallel_for(0, a.N * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> gt(chunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, k = task % chunks;
      const int64_t lo = k * chunk, len = std::min(chunk, a.HW - lo);
      T* noise_sum = a.noise ? g.noise_channel_sum + n * a.HW + lo : nullptr;
      if (noise_sum) std::fill(noise_sum, noise_sum + len, T(0));
      for (int64_t c = 0; c < a.C; ++c) {
        const int64_t offset = (n * a.C + c) * a.HW + lo;
        const T d = a.demod ? a.demod[n * a.C + c] : T(1);
        double bias_sum = 0, demod_sum = 0;
        for (int64_t i = 0; i < len; ++i) {
          gt[i] = noise_bias_act_grad_preact(grad[offset + i], y[offset + i], a.p);
          g.grad_x[offset + i] = gt[i] * d;
          bias_sum += gt[i];
        }
        if (a.demod) {
          const T* x = a.x + offset;
          for (int64_t i = 0; i < len; ++i) demod_sum += double(gt[i]) * x[i];
          demod_acc[task * a.C + c] = demod_sum;
        }
        if (noise_sum)
          for (int64_t i = 0; i < len; ++i) noise_sum[i] += gt[i];
        bias_acc[task * a.C + c] = bias_sum;
      }
    }
  });
  for (int64_t n = 0; n < a.N; ++n) {
    for (int64_t c = 0; c < a.C; ++c) {
      double b = 0, d = 0;
      for (int64_t k = 0; k < chunks; ++k) {
        b += bias_acc[(n * chunks + k) * a.C + c];
        if (a.demod) d += demod_acc[(n * chunks + k) * a.C + c];
      }
      g.bias_partial[n * a.C + c] = T(b);
      if (a.demod) g.demod_partial[n * a.C + c] = T(d);
    }
  }
}

#define INSTANTIATE(T)                                                                   \
  template void noise_bias_act_forward<T>(const NoiseBiasActArgs<T>&, T*);             \
  template void noise_bias_act_backward<T>(const NoiseBiasActArgs<T>&, const T*, const T*, \
                                           const NoiseBiasActGrads<T>&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cpu
