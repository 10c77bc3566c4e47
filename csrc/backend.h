// Picks the CPU or CUDA kernel for the device of a tensor; CUDA kernels run on the current stream.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include "kernels.h"

#ifdef PULSE_EXT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#define PULSE_CALL_CUDA(like, fn, ...) \
  ::pulse_ext::cuda::fn(__VA_ARGS__, c10::cuda::getCurrentCUDAStream((like).device().index()).stream())
#else
#define PULSE_CALL_CUDA(like, fn, ...) \
  TORCH_CHECK(false, "pulse_ext was built without CUDA kernels; rebuild with a CUDA toolkit")
#endif

// PULSE_CALL_BACKEND(tensor, kernel_name, args...) runs cpu::kernel_name(args...) or
// cuda::kernel_name(args..., stream) for tensor's device.
#define PULSE_CALL_BACKEND(like, fn, ...)       \
  do {                                          \
    if ((like).is_cuda()) {                     \
      PULSE_CALL_CUDA(like, fn, __VA_ARGS__);   \
    } else {                                    \
      ::pulse_ext::cpu::fn(__VA_ARGS__);        \
    }                                           \
  } while (0)

namespace pulse_ext {

// The tensor's data, or nullptr for an absent optional input.
template <typename T>
inline const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr<T>() : nullptr;
}

inline std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->contiguous();
}

// A CPU tensor laid out channels-last (and not also plain contiguous): the CPU kernels then work
// on it as NHWC (see kernels.h), and outputs keep that layout.
inline bool is_cpu_channels_last(const at::Tensor& t) {
  return !t.is_cuda() && t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline void check_like(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but x has ",
              x.scalar_type());
}

inline void check_like(const std::optional<at::Tensor>& t, const at::Tensor& x, const char* op, const char* name) {
  if (t.has_value() && t->defined()) check_like(*t, x, op, name);
}

}  // namespace pulse_ext
