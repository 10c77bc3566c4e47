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

namespace pulse_ext::cpu {

// About as many elements per parallel task as ATen's own GRAIN_SIZE: small ops stay on the calling
// thread, because waking the OpenMP team costs more than they do (milliseconds when another
// process holds a core).
constexpr int64_t kElementsPerTask = 32768;

// The grain (in loop iterations) for a loop whose iterations each touch `elements_per_iteration` elements.
inline int64_t grain_for(int64_t elements_per_iteration) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_iteration));
}

}  // namespace pulse_ext::cpu
