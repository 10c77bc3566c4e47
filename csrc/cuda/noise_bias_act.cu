// CUDA kernels of noise_bias_act (element math in common/noise_bias_act.h, shared with the CPU).
#include "../kernels.h"
#include "cuda_utils.cuh"

namespace pulse_ext::cuda {
namespace {

template <typename T>
__global__ void forward_kernel(NoiseBiasActArgs<T> a, T* __restrict__ y) {
  const int64_t total = a.N * a.C * a.HW;
  const T strength = a.noise_strength ? *a.noise_strength : T(1);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t plane = idx / a.HW, hw = idx - plane * a.HW;
    const int64_t n = plane / a.C, c = plane - n * a.C;
    const T d = a.demod ? a.demod[plane] : T(1);
    const T b = a.bias ? a.bias[c] : T(0);
    const T noise = a.noise ? strength * a.noise[(a.noise_batch == 1 ? 0 : n) * a.HW + hw] : T(0);
    y[idx] = noise_bias_act_forward(a.x[idx], d, noise, b, a.p);
  }
}

// One block per (n, c) plane: writes grad_x and the plane's sums for the bias and demod gradients.
template <typename T>
__global__ void plane_backward_kernel(NoiseBiasActArgs<T> a, const T* __restrict__ grad, const T* __restrict__ y,
                                      NoiseBiasActGrads<T> g) {
  const int64_t plane = blockIdx.x;
  const T d = a.demod ? a.demod[plane] : T(1);
  const int64_t base = plane * a.HW;
  T bias_sum = T(0), demod_sum = T(0);
  for (int64_t i = threadIdx.x; i < a.HW; i += blockDim.x) {
    const T gt = noise_bias_act_grad_preact(grad[base + i], y[base + i], a.p);
    g.grad_x[base + i] = gt * d;
    bias_sum += gt;
    if (a.demod) demod_sum += gt * a.x[base + i];
  }
  bias_sum = block_sum(bias_sum);
  if (threadIdx.x == 0) g.bias_partial[plane] = bias_sum;
  if (a.demod) {
    demod_sum = block_sum(demod_sum);
    if (threadIdx.x == 0) g.demod_partial[plane] = demod_sum;
  }
}

// One thread per (n, pixel): the channel sum of the pre-activation gradient, recomputed from grad
// and y (two coalesced reads per element) rather than accumulated with atomics, so it is deterministic.
template <typename T>
__global__ void noise_backward_kernel(NoiseBiasActArgs<T> a, const T* __restrict__ grad, const T* __restrict__ y,
                                      T* __restrict__ noise_channel_sum) {
  const int64_t total = a.N * a.HW;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / a.HW, hw = idx - n * a.HW;
    T acc = T(0);
    for (int64_t c = 0; c < a.C; ++c) {
      const int64_t e = (n * a.C + c) * a.HW + hw;
      acc += noise_bias_act_grad_preact(grad[e], y[e], a.p);
    }
    noise_channel_sum[idx] = acc;
  }
}

}  // namespace

template <typename T>
void noise_bias_act_forward(const NoiseBiasActArgs<T>& a, T* y, cudaStream_t stream) {
  forward_kernel<T><<<grid_for(a.N * a.C * a.HW), kThreads, 0, stream>>>(a, y);
  check_launch("noise_bias_act_forward");
}

template <typename T>
void noise_bias_act_backward(const NoiseBiasActArgs<T>& a, const T* grad, const T* y, const NoiseBiasActGrads<T>& g,
                             cudaStream_t stream) {
  plane_backward_kernel<T><<<static_cast<unsigned int>(a.N * a.C), kThreads, 0, stream>>>(a, grad, y, g);
  check_launch("noise_bias_act_backward");
  if (a.noise) {
    noise_backward_kernel<T><<<grid_for(a.N * a.HW), kThreads, 0, stream>>>(a, grad, y, g.noise_channel_sum);
    check_launch("noise_bias_act_backward (noise)");
  }
}

#define INSTANTIATE(T)                                                                                      \
  template void noise_bias_act_forward<T>(const NoiseBiasActArgs<T>&, T*, cudaStream_t);                  \
  template void noise_bias_act_backward<T>(const NoiseBiasActArgs<T>&, const T*, const T*,                 \
                                           const NoiseBiasActGrads<T>&, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cuda
