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

template <typename T>
__global__ void __launch_bounds__(kThreads)
modconv_igemm_kernel(ModConvArgs<T> a, T* __restrict__ y) {
  __shared__ T tile_x[kTileK][kTileM];
  __shared__ T tile_w[kTileK][kTileN];
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

  for (int k0 = 0; k0 < K; k0 += kTileK) {
    // Operand A: consecutive threads take consecutive pixels (coalesced along the image row),
    // scaled by the sample's style as they are loaded.
    for (int e = tid; e < kTileK * kTileM; e += kThreads) {
      const int kk = e / kTileM, mm = e % kTileM;
      const int64_t m = m0 + mm;
      const int kidx = k0 + kk;
      T v = T(0);
      if (m < M && kidx < K) {
        const int64_t n = m / P;
        const int p = int(m - n * P), oh = p / a.Wo, ow = p % a.Wo;
        const int ci = kidx / kk2, r = kidx % kk2;
        const int ih = oh + r / a.k - a.pad, iw = ow + r % a.k - a.pad;
        if (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W)
          v = a.x[((n * a.Cin + ci) * a.H + ih) * a.W + iw] * (a.styles ? a.styles[n * a.Cin + ci] : T(1));
      }
      tile_x[kk][mm] = v;
    }
    // Operand B: the shared weight, read along its contiguous K dimension.
    for (int e = tid; e < kTileK * kTileN; e += kThreads) {
      const int kk = e % kTileK, nn = e / kTileK;
      const int co = n0 + nn, kidx = k0 + kk;
      tile_w[kk][nn] = (co < a.Cout && kidx < K) ? a.weight[int64_t(co) * K + kidx] : T(0);
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
