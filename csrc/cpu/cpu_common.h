// Helpers shared by the CPU kernels: parallel grain sizes and per-ISA clones of the inner loops.
#pragma once
#include <algorithm>
#include <cstdint>

// The inner loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time
// (GCC/Clang function multi-versioning), so one wheel runs everywhere and uses wide vectors where
// the CPU has them. Elsewhere the plain version is built.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PULSE_CPU_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PULSE_CPU_MULTIVERSION
#endif

// A helper of a PULSE_CPU_MULTIVERSION function: inlined into each of its clones, so that it is
// compiled for that clone's instruction set (a call would run the baseline x86-64 version).
#if defined(__GNUC__) || defined(__clang__)
#define PULSE_CPU_INLINE inline __attribute__((always_inline))
#else
#define PULSE_CPU_INLINE inline
#endif

namespace pulse_ext::cpu {

// About as many elements per parallel task as ATen's own GRAIN_SIZE: small ops stay on the calling
// thread, because waking the OpenMP team costs more than they do (milliseconds when another
// process holds a core).
constexpr int64_t kElementsPerTask = 32768;

// Independent partial sums in a reduction loop: enough for one AVX-512 register of floats, so the
// compiler can vectorise the loop (a single running sum is a serial dependency it may not reorder).
constexpr int kLanes = 16;

// The sum of kLanes partial sums as a tree (4 dependent steps instead of 16); overwrites lanes.
template <typename T>
inline T sum_lanes(T* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

// The grain (in loop iterations) for a loop whose iterations each touch `elements_per_iteration` elements.
inline int64_t grain_for(int64_t elements_per_iteration) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_iteration));
}

}  // namespace pulse_ext::cpu
