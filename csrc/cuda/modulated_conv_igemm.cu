// A direct (implicit-GEMM) CUDA kernel for the stride-1 modulated convolution, with the style
// scaling fused into the operand load and demodulation fused into the epilogue:
//   y[n, co, p] = d[n, co] * sum_{ci, kh, kw} w[co, ci, kh, kw] * (s[n, ci] * x[n, ci, p + (kh, kw) - pad])
// GEMM view: M = N * Ho * Wo output pixels (all restarts share the weight, so they are one M), the
// GEMM's N = Cout, K = Cin * k * k. Tiles of 64 pixels x 64 channels, K steps of 16, 256 threads
// each holding a 4x4 register tile. FP32/FP64 SIMT (exact to the reference); the bf16 tensor-core
// form is modulated_conv_igemm_bf16.cu. Styles and demod may be absent: the data gradient runs this
// kernel as a plain convolution with the flipped, transposed weight. Whether cuDNN or these kernels
// are the default is decided by benchmark on a GPU (benchmarks/bench_ops.py --device cuda).
#include "../kernels.h"
#include "cuda_utils.cuh"

namespace pulse_ext::cuda {
namespace {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kRegM = 4, kRegN = 4;
constexpr int kThreadsM = kTileM / kRegM, kThreadsN = kTileN / kRegN;  // 16 x 16 = 256 threads
static_assert(kThreadsM * kThreadsN == kThreads, "one thread per register tile");

// Each thread loads operand A for one fixed pixel of the tile (kThreads is a multiple of kTileM) and
// operand B for one fixed K offset (kThreads is a multiple of kTileK), so the pixel's coordinates are
// decoded once, not per element and K step.
static_assert(kThreads % kTileM == 0 && kThreads % kTileK == 0, "fixed per-thread load coordinates");

template <typename T>
__global__ void __launch_bounds__(kThreads)
modconv_igemm_kernel(ModConvArgs<T> a, T* __restrict__ y) {
  __shared__ T tile_x[kTileK][kTileM];
  // One column of padding: the B store below writes 16 K offsets of one column per half-warp, which
  // without it all fall in one bank (a 16-way conflict).
  __shared__ T tile_w[kTileK][kTileN + 1];
  const int64_t P = int64_t(a.Ho) * a.Wo, M = a.N * P;
  const int K = a.Cin * a.k * a.k, kk2 = a.k * a.k;
  const int tid = threadIdx.x, tm = tid % kThreadsM, tn = tid / kThreadsM;
  const int64_t m0 = int64_t(blockIdx.x) * kTileM;
  const int n0 = blockIdx.y * kTileN;
  T acc[kRegM][kRegN];
#pragma unroll
  for (int i = 0; i < kRegM; ++i)
#pragma unroll
    for (int j = 0; j < kRegN; ++j) acc[i][j] = T(0);

  // Operand A's pixel: consecutive threads take consecutive pixels (coalesced along the image row).
  const int a_mm = tid % kTileM, a_kk0 = tid / kTileM;
  const int64_t a_m = m0 + a_mm;
  const bool a_pixel_valid = a_m < M;
  int64_t a_n = 0;
  int a_oh = 0, a_ow = 0;
  if (a_pixel_valid) {
    a_n = a_m / P;
    const int p = int(a_m - a_n * P);
    a_oh = p / a.Wo;
    a_ow = p - a_oh * a.Wo;
  }
  const T* a_plane0 = a.x + a_n * a.Cin * int64_t(a.H) * a.W;  // sample a_n, channel 0
  const T* a_styles = a.styles ? a.styles + a_n * a.Cin : nullptr;
  // Operand B's K offset: the shared weight, read along its contiguous K dimension.
  const int b_kk = tid % kTileK, b_nn0 = tid / kTileK;

  for (int k0 = 0; k0 < K; k0 += kTileK) {
    // Operand A, scaled by the sample's style as it is loaded.
#pragma unroll
    for (int kk = a_kk0; kk < kTileK; kk += kThreads / kTileM) {
      const int kidx = k0 + kk;
      T v = T(0);
      if (a_pixel_valid && kidx < K) {
        const int ci = kidx / kk2, r = kidx - ci * kk2, kh = r / a.k;
        const int ih = a_oh + kh - a.pad, iw = a_ow + (r - kh * a.k) - a.pad;
        if (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W)
          v = a_plane0[(int64_t(ci) * a.H + ih) * a.W + iw] * (a_styles ? a_styles[ci] : T(1));
      }
      tile_x[kk][a_mm] = v;
    }
    // Operand B.
    const int b_kidx = k0 + b_kk;
#pragma unroll
    for (int nn = b_nn0; nn < kTileN; nn += kThreads / kTileK) {
      const int co = n0 + nn;
      tile_w[b_kk][nn] = (co < a.Cout && b_kidx < K) ? a.weight[int64_t(co) * K + b_kidx] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      T xa[kRegM], wb[kRegN];
#pragma unroll
      for (int i = 0; i < kRegM; ++i) xa[i] = tile_x[kk][tm + i * kThreadsM];
#pragma unroll
      for (int j = 0; j < kRegN; ++j) wb[j] = tile_w[kk][tn + j * kThreadsN];
#pragma unroll
      for (int i = 0; i < kRegM; ++i)
#pragma unroll
        for (int j = 0; j < kRegN; ++j) acc[i][j] += xa[i] * wb[j];
    }
    __syncthreads();
  }
  // Epilogue: demodulate and store NCHW; consecutive threads write consecutive pixels.
#pragma unroll
  for (int i = 0; i < kRegM; ++i) {
    const int64_t m = m0 + tm + i * kThreadsM;
    if (m >= M) continue;
    const int64_t n = m / P, p = m - n * P;
#pragma unroll
    for (int j = 0; j < kRegN; ++j) {
      const int co = n0 + tn + j * kThreadsN;
      if (co >= a.Cout) continue;
      const T d = a.demod ? a.demod[n * a.Cout + co] : T(1);
      y[(n * a.Cout + co) * P + p] = acc[i][j] * d;
    }
  }
}

}  // namespace

template <typename T>
void modulated_conv2d_igemm(const ModConvArgs<T>& a, T* y, cudaStream_t stream) {
  const int64_t M = a.N * int64_t(a.Ho) * a.Wo;
  const dim3 grid(static_cast<unsigned int>((M + kTileM - 1) / kTileM),
                  static_cast<unsigned int>((a.Cout + kTileN - 1) / kTileN));
  modconv_igemm_kernel<T><<<grid, kThreads, 0, stream>>>(a, y);
  check_launch("modulated_conv2d_igemm");
}

template void modulated_conv2d_igemm<float>(const ModConvArgs<float>&, float*, cudaStream_t);
template void modulated_conv2d_igemm<double>(const ModConvArgs<double>&, double*, cudaStream_t);

}  // namespace pulse_ext::cuda
