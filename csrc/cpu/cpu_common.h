// Helpers shared by the CPU kernels: parallel grain sizes and per-ISA clones of the inner loops.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

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

// The sum of kLanes partial sums as a tree (4 dependent steps instead of 16): halves added as vectors,
// lanes[l] + lanes[l + width] for width 8, 4, 2, 1, the same order as a scalar tree. Inlined into the
// caller's clone, so the halves are register operations (an out-of-line scalar version had been a
// quarter of the channels-last noise_bias_act backward at 32 channels).
template <typename T>
PULSE_CPU_INLINE T sum_lanes(const T* lanes) {
  typedef T V8 __attribute__((vector_size(8 * sizeof(T))));
  typedef T V4 __attribute__((vector_size(4 * sizeof(T))));
  typedef T V2 __attribute__((vector_size(2 * sizeof(T))));
  static_assert(kLanes == 16, "sum_lanes folds 16 lanes");
  V8 a, b;
  std::memcpy(&a, lanes, sizeof(a));
  std::memcpy(&b, lanes + 8, sizeof(b));
  const V8 s8 = a + b;
  V4 c, d;
  std::memcpy(&c, &s8, sizeof(c));
  std::memcpy(&d, reinterpret_cast<const char*>(&s8) + sizeof(c), sizeof(d));
  const V4 s4 = c + d;
  V2 e, f;
  std::memcpy(&e, &s4, sizeof(e));
  std::memcpy(&f, reinterpret_cast<const char*>(&s4) + sizeof(e), sizeof(f));
  const V2 s2 = e + f;
  return s2[0] + s2[1];
}

// The grain (in loop iterations) for a loop whose iterations each touch `elements_per_iteration` elements.
inline int64_t grain_for(int64_t elements_per_iteration) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_iteration));
}

}  // namespace pulse_ext::cpu
