// Small helpers shared by the CUDA kernels: launch checks, grid sizes, block reductions.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pulse_ext::cuda {

constexpr int kThreads = 256;

// Raises (as a Python RuntimeError through the dispatcher) when the launch failed.
inline void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("pulse_ext CUDA kernel ") + kernel + " failed to launch: " +
                             cudaGetErrorString(err));
}

// Enough blocks for a grid-stride loop over n elements without oversubscribing the launch.
inline unsigned int grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  const int64_t cap = int64_t(1) << 20;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// Lets `kernel` launch with `dynamic_bytes` of dynamic shared memory on the current device, or throws
// naming `what` and the largest size that fits. The limit is the device's opt-in maximum per block less
// the kernel's own static shared memory (e.g. block_sum's partials); above the default 48 KB the kernel
// is opted in, as CUDA requires.
template <typename Kernel>
void reserve_dynamic_shared(Kernel kernel, size_t dynamic_bytes, const std::string& what) {
  int device = 0, optin_bytes = 0;
  cudaFuncAttributes attributes{};
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess)
    throw std::runtime_error(what + ": could not query the device's shared-memory limits: " +
                             cudaGetErrorString(cudaGetLastError()));
  const size_t available = size_t(optin_bytes) > attributes.sharedSizeBytes
                               ? size_t(optin_bytes) - attributes.sharedSizeBytes : 0;
  if (dynamic_bytes > available)
    throw std::runtime_error(what + " needs " + std::to_string(dynamic_bytes) + " bytes of shared memory per block; "
                             "this device allows " + std::to_string(available) + " (" + std::to_string(optin_bytes) +
                             " per block less the kernel's " + std::to_string(attributes.sharedSizeBytes) +
                             " static)");
  constexpr size_t kDefaultDynamicLimit = 48 * 1024;
  if (dynamic_bytes + attributes.sharedSizeBytes > kDefaultDynamicLimit &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(dynamic_bytes)) != cudaSuccess)
    throw std::runtime_error(what + ": could not opt in to " + std::to_string(dynamic_bytes) +
                             " bytes of dynamic shared memory: " + cudaGetErrorString(cudaGetLastError()));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block; the result is valid in thread 0. Call from every thread of the block.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < warps ? partial[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

}  // namespace pulse_ext::cuda
