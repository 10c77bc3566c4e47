// Raw-pointer kernels behind the ops, one set per backend. The op functions in csrc/*.cpp validate,
// allocate and pick the backend; these only compute. Tensors are contiguous NCHW.
// CPU kernels: csrc/cpu/*.cpp (at::parallel_for); CUDA kernels: csrc/cuda/*.cu.
#pragma once
#include <cstdint>

#include "common/noise_bias_act.h"

#ifdef PULSE_EXT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace pulse_ext {

// Arguments shared by both backends. Optional inputs are nullptr when absent.
template <typename T>
struct NoiseBiasActArgs {
  const T* x;               // [N, C, HW]
  const T* demod;           // [N, C] or nullptr
  const T* noise;           // [noise_batch, HW] or nullptr
  const T* noise_strength;  // scalar or nullptr (= 1); on the tensors' device
  const T* bias;            // [C] or nullptr
  int64_t N, C, HW, noise_batch;
  NoiseBiasActParams<T> p;
};

template <typename T>
struct NoiseBiasActGrads {
  T* grad_x;             // [N, C, HW]
  T* demod_partial;      // [N, C]: sum over the plane of gt * x  (only when demod)
  T* bias_partial;       // [N, C]: sum over the plane of gt
  T* noise_channel_sum;  // [N, HW]: sum over channels of gt   (only when noise)
};

// area-downscale loss: img [N, C, H, W], target [target_batch, C, h, w], factor fh = H / h, fw = W / w.
template <typename T>
struct AreaDownscaleArgs {
  const T* img;
  const T* target;
  int64_t N, C, H, W, h, w, target_batch;
};

// modulated convolution (stride 1): x [N, Cin, H, W], weight [Cout, Cin, k, k] contiguous, styles
// [N, Cin] and demod [N, Cout] or nullptr (= 1); output [N, Cout, Ho, Wo]. Without styles and demod
// it is a plain convolution, which is how the data gradient runs it (flipped, transposed weight).
template <typename T>
struct ModConvArgs {
  const T* x;
  const T* weight;
  const T* styles;
  const T* demod;
  int64_t N;
  int Cin, H, W, Cout, k, pad, Ho, Wo;
};

namespace cpu {
template <typename T> void noise_bias_act_forward(const NoiseBiasActArgs<T>& a, T* y);
template <typename T> void noise_bias_act_backward(const NoiseBiasActArgs<T>& a, const T* grad, const T* y,
                                                   const NoiseBiasActGrads<T>& g);
// The backward's last reductions, from the partial sums of noise_bias_act_backward(_nhwc): grad_bias [C]
// = sum over n of bias_partial; grad_noise [noise_batch, HW] = strength * noise_channel_sum (summed over
// n for a shared map); *grad_strength = sum of noise * noise_channel_sum. Outputs may be nullptr (not
// wanted). Plain loops: at the generator's small layers an ATen call each cost more than the kernel.
template <typename T> void noise_bias_act_reduce_grads(const NoiseBiasActArgs<T>& a, const T* bias_partial,
                                                       const T* noise_channel_sum, T* grad_bias, T* grad_noise,
                                                       T* grad_strength);
// diff [N, C, h, w] = blockmean(img) - target; partial sums of diff^2 and |diff| per output row, [N, C * h].
template <typename T> void area_downscale_forward(const AreaDownscaleArgs<T>& a, T* diff, T* sq_partial, T* abs_partial);
// grad_img from diff and per-sample scales (see common/area_downscale.h).
template <typename T> void area_downscale_backward(const T* diff, const T* scale2, const T* scale1, T* grad_img,
                                                   int64_t N, int64_t C, int64_t H, int64_t W, int64_t h, int64_t w);
// out[n, c, :] = x[n, c, :] * scale[n, c]   (x: [N, C, HW])
template <typename T> void scale_channels(const T* x, const T* scale, T* out, int64_t N, int64_t C, int64_t HW);
// grad_x = grad * s; grad_s[n, c] = sum_hw grad * x   (the backward of scale_channels, one pass)
template <typename T> void scale_channels_backward(const T* grad, const T* x, const T* scale, T* grad_x, T* grad_s,
                                                   int64_t N, int64_t C, int64_t HW);
// grad_pre = grad * d; grad_d[n, c] = sum_hw grad * y / d   (y = d * pre, the demodulated output)
template <typename T> void demod_backward(const T* grad, const T* y, const T* demod, T* grad_pre, T* grad_demod,
                                          int64_t N, int64_t C, int64_t HW);
// out [N*C, 2H, 2W] = scale[nc] * FIR(in [N*C, 2H+1, 2W+1]); scale may be nullptr (= 1)
template <typename T> void fir_upsample_forward(const T* in, const T* scale, T* out, int64_t planes, int64_t hi, int64_t wi);
// grad_in [N*C, 2H+1, 2W+1] = FIR^T(grad_out [N*C, 2H, 2W]) (already multiplied by the scale)
template <typename T> void fir_upsample_backward(const T* grad_out, T* grad_in, int64_t planes, int64_t hi, int64_t wi);

// Channels-last (NHWC) variants, CPU only: oneDNN runs convolutions about 3x faster on NHWC, so on
// the CPU the fused generator keeps its activations NHWC from layer to layer. Memory [N, HW, C];
// every inner loop runs along C (contiguous).
template <typename T> void noise_bias_act_forward_nhwc(const NoiseBiasActArgs<T>& a, T* y);
template <typename T> void noise_bias_act_backward_nhwc(const NoiseBiasActArgs<T>& a, const T* grad, const T* y,
                                                        const NoiseBiasActGrads<T>& g);
// out = x * scale[n, c]
template <typename T> void scale_channels_nhwc(const T* x, const T* scale, T* out, int64_t N, int64_t C, int64_t HW);
// grad_x = grad * s; grad_s[n, c] = sum_hw grad * x
template <typename T> void scale_channels_backward_nhwc(const T* grad, const T* x, const T* scale, T* grad_x,
                                                        T* grad_s, int64_t N, int64_t C, int64_t HW);
// The 1x1 modulated convolution (toRGB) for few output channels, x [N, HW, Cin] -> y [N, HW, Cout]:
// y[n, p, o] = demod[n, o] * sum_i weight[o, i] * styles[n, i] * x[n, p, i]; weight [Cout, Cin]
// contiguous, demod [N, Cout] or nullptr (= 1). A batched GEMM with Cout = 3 (or K = 3 for the data
// gradient) runs far below the memory bound; these are one streaming pass over x each.
template <typename T> void pointwise_modconv_forward_nhwc(const T* x, const T* weight, const T* styles, const T* demod,
                                                          T* y, int64_t N, int64_t HW, int64_t Cin, int64_t Cout);
// Its backward from grad [N, HW, Cout]: grad_x [N, HW, Cin] and grad_styles [N, Cin], in one pass.
template <typename T> void pointwise_modconv_backward_nhwc(const T* grad, const T* x, const T* weight, const T* styles,
                                                           const T* demod, T* grad_x, T* grad_styles, int64_t N,
                                                           int64_t HW, int64_t Cin, int64_t Cout);
// The skip image path's 2x [1,3,3,1] upsampling (gain 4), [N, H, W, C] -> [N, 2H, 2W, C], and its
// adjoint [N, 2H, 2W, C] -> [N, H, W, C] (H, W: the input's size).
template <typename T> void upsample2d_nhwc(const T* x, T* y, int64_t N, int64_t C, int64_t H, int64_t W);
template <typename T> void upsample2d_adjoint_nhwc(const T* grad, T* grad_x, int64_t N, int64_t C, int64_t H,
                                                   int64_t W);
// [N, hi, wi, C] -> [N, hi-1, wi-1, C]; scale [N, C] or nullptr
template <typename T> void fir_upsample_forward_nhwc(const T* in, const T* scale, T* out, int64_t N, int64_t C,
                                                     int64_t hi, int64_t wi);
template <typename T> void fir_upsample_backward_nhwc(const T* grad_out, T* grad_in, int64_t N, int64_t C, int64_t hi,
                                                      int64_t wi);

// 3x3 stride-1 padding-1 convolutions by Winograd F(4x4, 3x3) on NHWC tensors (cpu/winograd_conv.cpp).
// The filter weight [Cout, Cin, 3, 3] transformed for it: U [36, Cin, Cout] (adjoint = false: the
// convolution Cin -> Cout), or [36, Cout, Cin] (adjoint = true: its data gradient Cout -> Cin).
template <typename T> void winograd_filter_transform(const T* weight, int64_t Cout, int64_t Cin, bool adjoint, T* U);
// y [N, H, W, Cout] = out_scale[n, o] * conv3x3(x [N, H, W, Cin] * in_scale[n, i], filter), U from
// winograd_filter_transform; in_scale [N, Cin] and out_scale [N, Cout] may be nullptr (= 1).
template <typename T> void winograd_conv3x3_nhwc(const T* x, const T* in_scale, const T* U, const T* out_scale, T* y,
                                                 int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t Cout);
// The same convolution in three passes over the whole layer, for wide layers whose transformed filter
// does not fit in cache: V [36, tiles, Cin] = input transform; M [36, tiles, Cout] = V x U (a batched
// GEMM, the caller's); y = output transform of M. tiles = winograd_tiles(N, H, W).
int64_t winograd_tiles(int64_t N, int64_t H, int64_t W);
template <typename T> void winograd_input_transform_nhwc(const T* x, const T* in_scale, T* V, int64_t N, int64_t H,
                                                         int64_t W, int64_t C);
template <typename T> void winograd_output_transform_nhwc(const T* M, const T* out_scale, T* y, int64_t N, int64_t H,
                                                          int64_t W, int64_t K);
}  // namespace cpu

#ifdef PULSE_EXT_WITH_CUDA
namespace cuda {
template <typename T> void noise_bias_act_forward(const NoiseBiasActArgs<T>& a, T* y, cudaStream_t stream);
template <typename T> void noise_bias_act_backward(const NoiseBiasActArgs<T>& a, const T* grad, const T* y,
                                                   const NoiseBiasActGrads<T>& g, cudaStream_t stream);
// sq_partial / abs_partial: [N, C * h] partial sums (one per output row).
template <typename T> void area_downscale_forward(const AreaDownscaleArgs<T>& a, T* diff, T* sq_partial, T* abs_partial,
                                                  cudaStream_t stream);
template <typename T> void area_downscale_backward(const T* diff, const T* scale2, const T* scale1, T* grad_img,
                                                   int64_t N, int64_t C, int64_t H, int64_t W, int64_t h, int64_t w,
                                                   cudaStream_t stream);
template <typename T> void scale_channels(const T* x, const T* scale, T* out, int64_t N, int64_t C, int64_t HW,
                                          cudaStream_t stream);
template <typename T> void scale_channels_backward(const T* grad, const T* x, const T* scale, T* grad_x, T* grad_s,
                                                   int64_t N, int64_t C, int64_t HW, cudaStream_t stream);
template <typename T> void demod_backward(const T* grad, const T* y, const T* demod, T* grad_pre, T* grad_demod,
                                          int64_t N, int64_t C, int64_t HW, cudaStream_t stream);
template <typename T> void fir_upsample_forward(const T* in, const T* scale, T* out, int64_t planes, int64_t hi,
                                                int64_t wi, cudaStream_t stream);
template <typename T> void fir_upsample_backward(const T* grad_out, T* grad_in, int64_t planes, int64_t hi, int64_t wi,
                                                 cudaStream_t stream);
// The direct implicit-GEMM modulated convolution (stride 1), styles and demod fused: SIMT, exact
// in T (cuda/modulated_conv_igemm.cu) ...
template <typename T> void modulated_conv2d_igemm(const ModConvArgs<T>& a, T* y, cudaStream_t stream);
// ... and on tensor cores with bf16 operands, fp32 accumulation (cuda/modulated_conv_igemm_bf16.cu):
// the weight comes as bf16 bit patterns laid out [Cout, k, k, Cin] (a.weight is not read); needs
// compute capability 8.0 or newer (igemm_bf16_supported).
bool igemm_bf16_supported(int device_index);
void modulated_conv2d_igemm_bf16(const ModConvArgs<float>& a, const uint16_t* weight_taps_bf16, float* y,
                                 cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace pulse_ext
