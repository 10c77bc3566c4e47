// CUDA kernels around the modulated convolution's library convolution: style scaling,
// demodulation and the FIR upsampling filter (math shared with the CPU in common/fir_upsample.h).
#include "../common/fir_upsample.h"
#include "../kernels.h"
#include "cuda_utils.cuh"

namespace pulse_ext::cuda {
namespace {

template <typename T>
__global__ void scale_channels_kernel(const T* __restrict__ x, const T* __restrict__ scale, T* out, int64_t planes,
                                      int64_t HW) {
  const int64_t total = planes * HW;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x)
    out[idx] = x[idx] * scale[idx / HW];
}

// One block per plane: out = a * s and dot = sum(a * b) over the plane (divided by s when asked).
// It is both the style backward (a = grad, b = x: grad_x, grad_s) and the demodulation backward
// (a = grad, b = y = d * pre: grad_pre, grad_d = sum(grad * y) / d).
template <typename T>
__global__ void scale_and_dot_kernel(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ scale,
                                     T* __restrict__ out, T* __restrict__ dot, int64_t HW, bool divide_dot_by_scale) {
  const int64_t plane = blockIdx.x, base = plane * HW;
  const T s = scale[plane];
  T acc = T(0);
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const T v = a[base + i];
    out[base + i] = v * s;
    acc += v * b[base + i];
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) dot[plane] = divide_dot_by_scale ? acc / s : acc;
}

template <typename T>
__global__ void fir_forward_kernel(const T* __restrict__ in, const T* __restrict__ scale, T* __restrict__ out,
                                   int64_t planes, int hi, int wi) {
  const int ho = hi - 1, wo = wi - 1;
  const int64_t total = planes * ho * wo;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int q = int(idx % wo), p = int((idx / wo) % ho);
    const int64_t plane = idx / (int64_t(ho) * wo);
    const T s = scale ? scale[plane] : T(1);
    out[idx] = s * fir_upsample_at(in + plane * hi * wi, hi, wi, p, q);
  }
}

template <typename T>
__global__ void fir_backward_kernel(const T* __restrict__ grad_out, T* __restrict__ grad_in, int64_t planes, int hi,
                                    int wi) {
  const int ho = hi - 1, wo = wi - 1;
  const int64_t total = planes * hi * wi;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(idx % wi), r = int((idx / wi) % hi);
    const int64_t plane = idx / (int64_t(hi) * wi);
    grad_in[idx] = fir_upsample_adjoint_at(grad_out + plane * ho * wo, ho, wo, r, c);
  }
}

}  // namespace

template <typename T>
void scale_channels(const T* x, const T* scale, T* out, int64_t N, int64_t C, int64_t HW, cudaStream_t stream) {
  scale_channels_kernel<T><<<grid_for(N * C * HW), kThreads, 0, stream>>>(x, scale, out, N * C, HW);
  check_launch("scale_channels");
}

template <typename T>
void scale_channels_backward(const T* grad, const T* x, const T* scale, T* grad_x, T* grad_s, int64_t N, int64_t C,
                             int64_t HW, cudaStream_t stream) {
  scale_and_dot_kernel<T><<<static_cast<unsigned int>(N * C), kThreads, 0, stream>>>(grad, x, scale, grad_x, grad_s,
                                                                                    HW, false);
  check_launch("scale_channels_backward");
}

template <typename T>
void demod_backward(const T* grad, const T* y, const T* demod, T* grad_pre, T* grad_demod, int64_t N, int64_t C,
                    int64_t HW, cudaStream_t stream) {
  scale_and_dot_kernel<T><<<static_cast<unsigned int>(N * C), kThreads, 0, stream>>>(grad, y, demod, grad_pre,
                                                                                    grad_demod, HW, true);
  check_launch("demod_backward");
}

template <typename T>
void fir_upsample_forward(const T* in, const T* scale, T* out, int64_t planes, int64_t hi, int64_t wi,
                          cudaStream_t stream) {
  fir_forward_kernel<T><<<grid_for(planes * (hi - 1) * (wi - 1)), kThreads, 0, stream>>>(in, scale, out, planes,
                                                                                         int(hi), int(wi));
  check_launch("fir_upsample_forward");
}

template <typename T>
void fir_upsample_backward(const T* grad_out, T* grad_in, int64_t planes, int64_t hi, int64_t wi, cudaStream_t stream) {
  fir_backward_kernel<T><<<grid_for(planes * hi * wi), kThreads, 0, stream>>>(grad_out, grad_in, planes, int(hi),
                                                                              int(wi));
  check_launch("fir_upsample_backward");
}

#define INSTANTIATE(T)                                                                                                \
  template void scale_channels<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, cudaStream_t);                   \
  template void scale_channels_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t,           \
                                           cudaStream_t);                                                             \
  template void demod_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t, cudaStream_t);     \
  template void fir_upsample_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, cudaStream_t);             \
  template void fir_upsample_backward<T>(const T*, T*, int64_t, int64_t, int64_t, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cuda
