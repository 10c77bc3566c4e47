// Element math of noise_bias_act: y = clamp(lrelu(x*d + noise_term + bias, slope) * gain, -c, c).
#pragma once
#include "macros.h"

namespace pulse_ext {

template <typename T>
struct NoiseBiasActParams {
  T slope;
  T gain;
  T clamp;  // only read when has_clamp
  bool has_clamp;
};

template <typename T>
PULSE_HOST_DEVICE T noise_bias_act_forward(T x, T demod, T noise_term, T bias, const NoiseBiasActParams<T>& p) {
  T t = x * demod + noise_term + bias;
  T a = (t > T(0) ? t : t * p.slope) * p.gain;
  if (p.has_clamp) a = a > p.clamp ? p.clamp : (a < -p.clamp ? -p.clamp : a);
  return a;
}

// d loss / d pre-activation from the output y: with gain > 0 and slope >= 0 the sign of y tells the
// leaky-ReLU branch, and |y| >= clamp tells that the clamp cut the gradient (NVIDIA's bias_act rule).
template <typename T>
PULSE_HOST_DEVICE T noise_bias_act_grad_preact(T grad, T y, const NoiseBiasActParams<T>& p) {
  if (p.has_clamp && (y >= p.clamp || y <= -p.clamp)) return T(0);
  return grad * p.gain * (y > T(0) ? T(1) : p.slope);
}

}  // namespace pulse_ext
