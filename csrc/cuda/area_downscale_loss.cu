// CUDA kernels of the area-downscale loss.
#include "../common/area_downscale.h"
#include "../kernels.h"
#include "cuda_utils.cuh"

namespace pulse_ext::cuda {
namespace {

// One block per output row (n, c, i): each thread sums image columns over the fh-row band (reads
// coalesced across the block), then each output pixel sums its fw column sums, both in a fixed order:
// no atomics, so the loss is the same bit for bit on every run.
template <typename T>
__global__ void forward_kernel(AreaDownscaleArgs<T> a, T* __restrict__ diff, T* __restrict__ sq_partial,
                               T* __restrict__ abs_partial) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  T* column_sum = reinterpret_cast<T*>(shared_raw);  // [W]
  const int64_t row = blockIdx.x;
  const int64_t i = row % a.h, plane = row / a.h, c = plane % a.C, n = plane / a.C;
  const int64_t fh = a.H / a.h, fw = a.W / a.w;
  const T* band = a.img + (plane * a.H + i * fh) * a.W;
  for (int64_t x = threadIdx.x; x < a.W; x += blockDim.x) {
    T sum = T(0);
    for (int64_t r = 0; r < fh; ++r) sum += band[r * a.W + x];
    column_sum[x] = sum;
  }
  __syncthreads();
  const T* target = a.target + (((a.target_batch == 1 ? 0 : n) * a.C + c) * a.h + i) * a.w;
  const T inv_area = T(1) / T(fh * fw);
  T sq = T(0), ab = T(0);
  for (int64_t j = threadIdx.x; j < a.w; j += blockDim.x) {
    T sum = T(0);
    for (int64_t q = 0; q < fw; ++q) sum += column_sum[j * fw + q];
    const T dv = sum * inv_area - target[j];
    diff[row * a.w + j] = dv;
    sq += dv * dv;
    ab += dv < T(0) ? -dv : dv;
  }
  sq = block_sum(sq);
  ab = block_sum(ab);
  if (threadIdx.x == 0) {
    sq_partial[row] = sq;
    abs_partial[row] = ab;
  }
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ diff, const T* __restrict__ scale2, const T* __restrict__ scale1,
                                T* __restrict__ grad_img, int64_t N, int64_t C, int64_t H, int64_t W, int64_t h,
                                int64_t w) {
  const int64_t total = N * C * H * W, fh = H / h, fw = W / w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = idx % W, y = (idx / W) % H, plane = idx / (H * W), n = plane / C;
    grad_img[idx] = area_downscale_loss_grad(diff[(plane * h + y / fh) * w + x / fw], scale2[n], scale1[n]);
  }
}

}  // namespace

template <typename T>
void area_downscale_forward(const AreaDownscaleArgs<T>& a, T* diff, T* sq_partial, T* abs_partial,
                            cudaStream_t stream) {
  // One row of column sums per block: the image width bounds what the kernel can take.
  const size_t shared = size_t(a.W) * sizeof(T);
  reserve_dynamic_shared(forward_kernel<T>, shared,
                         "area_downscale_loss: an image width of " + std::to_string(a.W) + " (" +
                             std::to_string(sizeof(T)) + "-byte elements)");
  forward_kernel<T><<<static_cast<unsigned int>(a.N * a.C * a.h), kThreads, shared, stream>>>(a, diff, sq_partial,
                                                                                              abs_partial);
  check_launch("area_downscale_forward");
}

template <typename T>
void area_downscale_backward(const T* diff, const T* scale2, const T* scale1, T* grad_img, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t h, int64_t w, cudaStream_t stream) {
  backward_kernel<T><<<grid_for(N * C * H * W), kThreads, 0, stream>>>(diff, scale2, scale1, grad_img, N, C, H, W, h, w);
  check_launch("area_downscale_backward");
}

#define INSTANTIATE(T)                                                                                          \
  template void area_downscale_forward<T>(const AreaDownscaleArgs<T>&, T*, T*, T*, cudaStream_t);             \
  template void area_downscale_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, \
                                           int64_t, int64_t, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cuda
