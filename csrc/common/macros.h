// Shared by the CPU (.cpp) and CUDA (.cu) kernels so both run the same arithmetic.
#pragma once

#if defined(__CUDACC__)
#define PULSE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PULSE_HOST_DEVICE inline
#endif
