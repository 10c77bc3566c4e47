// The schemas of every pulse_ext op, and the Python module stub that loads them.
// Implementations register per backend in noise_bias_act.cpp, area_downscale_loss.cpp, modulated_conv.cpp,
// upsample2d.cpp.
#include <Python.h>
#include <torch/library.h>

#include "winograd_filters.h"

extern "C" {
// Importing pulse_ext._C runs this library's static registrations; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace {
bool compiled_with_cuda() {
#ifdef PULSE_EXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

TORCH_LIBRARY(pulse_ext, m) {
  m.def(
      "noise_bias_act(Tensor x, Tensor? demod, Tensor? noise, Tensor? noise_strength, Tensor? bias, float slope, "
      "float gain, float? clamp) -> Tensor");
  m.def(
      "noise_bias_act_backward(Tensor grad, Tensor y, Tensor x, Tensor? demod, Tensor? noise, "
      "Tensor? noise_strength, Tensor? bias, float slope, float gain, float? clamp) "
      "-> (Tensor grad_x, Tensor grad_demod, Tensor grad_noise, Tensor grad_noise_strength, Tensor grad_bias)");
  m.def("area_downscale_loss(Tensor img, Tensor target) -> (Tensor l2, Tensor l1, Tensor diff)");
  m.def(
      "area_downscale_loss_backward(Tensor grad_l2, Tensor grad_l1, Tensor diff, int img_height, int img_width) "
      "-> Tensor");
  // conv_dtype: the dtype the convolution itself runs in (e.g. bfloat16), None = x's dtype.
  m.def(
      "modulated_conv2d(Tensor x, Tensor weight, Tensor styles, Tensor? demod, int up, int padding, "
      "ScalarType? conv_dtype=None) -> Tensor");
  m.def(
      "modulated_conv2d_backward(Tensor grad, Tensor y, Tensor x, Tensor weight, Tensor styles, Tensor? demod, "
      "int up, int padding, ScalarType? conv_dtype=None) -> (Tensor grad_x, Tensor grad_styles, Tensor grad_demod)");
  m.def(
      "modulated_conv2d_weight_grad(Tensor grad, Tensor x, Tensor weight, Tensor styles, Tensor? demod, int up, "
      "int padding, ScalarType? conv_dtype=None) -> Tensor");
  // The skip image path's 2x FIR upsampling, [N, C, H, W] -> [N, C, 2H, 2W] (CPU; CUDA uses the library).
  m.def("upsample2d(Tensor x) -> Tensor");
  m.def("upsample2d_backward(Tensor grad) -> Tensor");
  m.def("_compiled_with_cuda() -> bool", &compiled_with_cuda);
  m.def("_winograd_filter_cache_entries() -> int", &pulse_ext::winograd_filter_cache_entries);
}
