// The stride-1 modulated convolution as an implicit GEMM on tensor cores (bf16 operands, fp32
// accumulation; sm_80 and newer), the form PULSE's conv_dtype=bfloat16 selects with
// PULSE_EXT_CUDA_CONV=igemm:
//   y[n, co, p] = d[n, co] * sum_{kh, kw, ci} w[co, kh, kw, ci] * bf16(s[n, ci] * x[n, ci, p + (kh, kw) - pad])
// The style scaling happens as operand A is loaded (one rounding to bf16, as the reference's cast of
// the scaled input), demodulation in the epilogue on the fp32 accumulator. All restarts share the
// weight, so the GEMM's M is N * Ho * Wo output pixels, its N is Cout, and its K runs over the taps
// (kh, kw) outermost and the input channels innermost: within one K step the tap is fixed, so a
// thread's pixel, its input position and its bounds check are computed once per tap, and the loads
// along K are channel planes of the same shifted pixel (coalesced across the warp's pixels).
//
// Block: 128 pixels x 64 output channels, K steps of 32 channels; 8 warps, each a 32 x 32 piece as
// 2 x 2 WMMA 16x16x16 fragments. Shared memory holds A [32][128+8] and B [64][32+8] in bf16 while
// the K loop runs, then (reused) the fp32 result [64][128+4] for a coalesced NCHW store. The pads
// keep WMMA's leading dimensions multiples of 16 bytes and its fragment pointers 32-byte aligned.
#include <cuda_bf16.h>
#include <mma.h>

#include <mutex>

#include "../kernels.h"
#include "cuda_utils.cuh"

namespace pulse_ext::cuda {
namespace {

constexpr int kBlockM = 128, kBlockN = 64, kBlockK = 32, kFrag = 16;
constexpr int kWarpsM = 4, kWarpsN = 2, kWarpTileM = kBlockM / kWarpsM, kWarpTileN = kBlockN / kWarpsN;
constexpr int kFragsM = kWarpTileM / kFrag, kFragsN = kWarpTileN / kFrag;  // 2 x 2 per warp
constexpr int kLdA = kBlockM + 8, kLdB = kBlockK + 8, kLdC = kBlockM + 4;
constexpr int kKRowsPerPass = kThreads / kBlockM;  // a thread loads every 2nd K row of its pixel
static_assert(kWarpsM * kWarpsN * 32 == kThreads, "8 warps");
static_assert(kThreads % kBlockM == 0 && kBlockK % kKRowsPerPass == 0 && kBlockN % kKRowsPerPass == 0, "A load map");
static_assert(kThreads % kBlockK == 0 && kBlockN % (kThreads / kBlockK) == 0, "B load map");
constexpr int kSmemAB = (kBlockK * kLdA + kBlockN * kLdB) * 2;
constexpr int kSmemC = kBlockN * kLdC * 4;
constexpr int kSmemBytes = kSmemAB > kSmemC ? kSmemAB : kSmemC;
static_assert((kBlockK * kLdA * 2) % 32 == 0, "B tile 32-byte aligned");

__global__ void __launch_bounds__(kThreads)
modconv_igemm_bf16_kernel(ModConvArgs<float> a, const __nv_bfloat16* __restrict__ w_taps, float* __restrict__ y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  __shared__ __align__(128) unsigned char smem[kSmemBytes];
  __nv_bfloat16* tile_a = reinterpret_cast<__nv_bfloat16*>(smem);  // (pixel m, channel kk) at kk * kLdA + m
  __nv_bfloat16* tile_b = tile_a + kBlockK * kLdA;                 // (channel kk, out channel nn) at nn * kLdB + kk
  float* tile_c = reinterpret_cast<float*>(smem);                  // (pixel m, out channel nn) at nn * kLdC + m

  const int tid = threadIdx.x, warp = tid / 32;
  const int warp_m = warp % kWarpsM, warp_n = warp / kWarpsM;
  const int64_t P = int64_t(a.Ho) * a.Wo, M = a.N * P, HW = int64_t(a.H) * a.W;
  const int n0 = blockIdx.y * kBlockN;
  const int ldw = a.k * a.k * a.Cin;  // w_taps [Cout, k, k, Cin]

  // This thread's pixel for loading A and storing y, and its first K row (then every kKRowsPerPass-th).
  const int pix = tid % kBlockM, row0 = tid / kBlockM;
  const int64_t m = int64_t(blockIdx.x) * kBlockM + pix;
  const bool m_valid = m < M;
  const int64_t n_img = m_valid ? m / P : 0;
  const int64_t p = m_valid ? m - n_img * P : 0;
  const int oh = int(p / a.Wo), ow = int(p % a.Wo);
  const float* x_img = a.x + n_img * a.Cin * HW;
  const float* s_img = a.styles ? a.styles + n_img * a.Cin : nullptr;

  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> acc[kFragsM][kFragsN];
#pragma unroll
  for (int i = 0; i < kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int tap = 0; tap < a.k * a.k; ++tap) {
    const int ih = oh + tap / a.k - a.pad, iw = ow + tap % a.k - a.pad;
    const bool inside = m_valid && ih >= 0 && ih < a.H && iw >= 0 && iw < a.W;
    const int64_t x_offset = inside ? int64_t(ih) * a.W + iw : 0;
    for (int c0 = 0; c0 < a.Cin; c0 += kBlockK) {
#pragma unroll
      for (int i = 0; i < kBlockK / kKRowsPerPass; ++i) {
        const int r = row0 + i * kKRowsPerPass, ci = c0 + r;
        float v = 0.0f;
        if (inside && ci < a.Cin) {
          v = x_img[ci * HW + x_offset];
          if (s_img) v *= s_img[ci];
        }
        tile_a[r * kLdA + pix] = __float2bfloat16(v);
      }
#pragma unroll
      for (int i = 0; i < kBlockN / (kThreads / kBlockK); ++i) {
        const int nn = tid / kBlockK + i * (kThreads / kBlockK), kk = tid % kBlockK, co = n0 + nn, ci = c0 + kk;
        tile_b[nn * kLdB + kk] =
            co < a.Cout && ci < a.Cin ? w_taps[int64_t(co) * ldw + tap * a.Cin + ci] : __float2bfloat16(0.0f);
      }
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < kBlockK; ks += kFrag) {
        wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, __nv_bfloat16, wmma::col_major> fa[kFragsM];
        wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, __nv_bfloat16, wmma::col_major> fb[kFragsN];
#pragma unroll
        for (int i = 0; i < kFragsM; ++i)
          wmma::load_matrix_sync(fa[i], tile_a + ks * kLdA + warp_m * kWarpTileM + i * kFrag, kLdA);
#pragma unroll
        for (int j = 0; j < kFragsN; ++j)
          wmma::load_matrix_sync(fb[j], tile_b + (warp_n * kWarpTileN + j * kFrag) * kLdB + ks, kLdB);
#pragma unroll
        for (int i = 0; i < kFragsM; ++i)
#pragma unroll
          for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();  // the tiles are overwritten next step (or by tile_c below)
    }
  }

#pragma unroll
  for (int i = 0; i < kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < kFragsN; ++j)
      wmma::store_matrix_sync(tile_c + (warp_n * kWarpTileN + j * kFrag) * kLdC + warp_m * kWarpTileM + i * kFrag,
                              acc[i][j], kLdC, wmma::mem_col_major);
  __syncthreads();
  if (!m_valid) return;
  // Epilogue: demodulate and store NCHW; consecutive threads write consecutive pixels.
  for (int nn = row0; nn < kBlockN; nn += kKRowsPerPass) {
    const int co = n0 + nn;
    if (co >= a.Cout) break;
    const float d = a.demod ? a.demod[n_img * a.Cout + co] : 1.0f;
    y[(n_img * a.Cout + co) * P + p] = tile_c[nn * kLdC + pix] * d;
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // bf16 tensor-core fragments need sm_80; the host launches this only there
#endif
}

}  // namespace

namespace {
bool query_igemm_bf16_supported(int device_index) {
  // The device must have bf16 tensor cores, and the code loaded for it must have been built for them
  // (a build with only older targets would run the kernel's __trap branch).
  int major = 0;
  cudaFuncAttributes attributes{};
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_index) != cudaSuccess ||
      cudaFuncGetAttributes(&attributes, modconv_igemm_bf16_kernel) != cudaSuccess) {
    cudaGetLastError();  // clear the error: the caller falls back to cuDNN
    return false;
  }
  return major >= 8 && attributes.binaryVersion >= 80;
}
}  // namespace

bool igemm_bf16_supported(int device_index) {
  // Asked on every bf16 convolution: the answer per device is fixed for the process, so it is queried once.
  constexpr int kMaxDevices = 64;
  static std::once_flag queried[kMaxDevices];
  static bool supported[kMaxDevices];
  if (device_index < 0 || device_index >= kMaxDevices) return query_igemm_bf16_supported(device_index);
  std::call_once(queried[device_index], [&] { supported[device_index] = query_igemm_bf16_supported(device_index); });
  return supported[device_index];
}

void modulated_conv2d_igemm_bf16(const ModConvArgs<float>& a, const uint16_t* weight_taps_bf16, float* y,
                                 cudaStream_t stream) {
  const int64_t M = a.N * int64_t(a.Ho) * a.Wo;
  const dim3 grid(static_cast<unsigned int>((M + kBlockM - 1) / kBlockM),
                  static_cast<unsigned int>((a.Cout + kBlockN - 1) / kBlockN));
  modconv_igemm_bf16_kernel<<<grid, kThreads, 0, stream>>>(
      a, reinterpret_cast<const __nv_bfloat16*>(weight_taps_bf16), y);
  check_launch("modulated_conv2d_igemm_bf16");
}

}  // namespace pulse_ext::cuda
