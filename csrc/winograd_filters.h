// Transformed 3x3 filters for the CPU Winograd convolution (cpu/winograd_conv.cpp), cached.
#pragma once
#include <ATen/ATen.h>

namespace pulse_ext {

// weight [Cout, Cin, 3, 3] (float or double, CPU) transformed by cpu::winograd_filter_transform:
// [36, Cin, Cout], or [36, Cout, Cin] for the data gradient (adjoint). Served from a cache keyed by
// the weight's exact contents, because PULSE convolves with the same frozen weights thousands of
// times and the transform costs as much as a small layer's convolution. The returned tensor must
// not be modified.
at::Tensor winograd_filter(const at::Tensor& weight, bool adjoint);

// How many transformed filters the cache holds (tests: it must not grow with a weight changed in place).
int64_t winograd_filter_cache_entries();

}  // namespace pulse_ext
