// pulse_ext::modulated_conv2d and its data-gradient backward for CPU and CUDA tensors.
//
// The weight is shared by the whole batch: styles scale the input channels (one pass fused with the
// copy the convolution needs anyway), the convolution is the backend's library convolution
// (oneDNN on CPU, cuDNN on CUDA) on the shared weight, and demodulation scales output channels
// (fused into the FIR pass for up=2). On the CPU, the 3x3 "same" layers instead run our Winograd
// F(4x4, 3x3) convolution with both scalings fused into its transforms (cpu/winograd_conv.cpp).
// The backward never forms a weight gradient.
#include <torch/library.h>

#include <cstdlib>
#include <list>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "winograd_filters.h"

namespace pulse_ext {
namespace {

constexpr const char* kOp = "modulated_conv2d";

// The convolution (or 1x1 product) may run in a narrower dtype than the activations (conv_dtype,
// e.g. bfloat16: oneDNN and cuDNN accumulate in fp32 and round the result): its operands are cast
// down right before it and its result cast back right after, so every kernel of ours (style scaling,
// FIR, demodulation) still runs in x's dtype.
using ConvDtype = std::optional<at::ScalarType>;

at::Tensor to_conv(const at::Tensor& t, ConvDtype conv_dtype) {
  return conv_dtype && *conv_dtype != t.scalar_type() ? t.to(*conv_dtype) : t;
}

at::Tensor from_conv(const at::Tensor& t, const at::Tensor& like) {
  return t.scalar_type() != like.scalar_type() ? t.to(like.scalar_type()) : t;
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                  const std::optional<at::Tensor>& demod, int64_t up, int64_t padding, ConvDtype conv_dtype) {
  if (conv_dtype)
    TORCH_CHECK(at::isFloatingType(*conv_dtype), kOp, ": conv_dtype must be a floating-point dtype, got ",
                *conv_dtype);
  TORCH_CHECK(x.dim() == 4, kOp, ": x must be [N, Cin, H, W], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3), kOp, ": weight must be [Cout, Cin, k, k], got ",
              weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), kOp, ": weight must have Cin=", x.size(1), " input channels, got ",
              weight.sizes());
  TORCH_CHECK(styles.dim() == 2 && styles.size(0) == x.size(0) && styles.size(1) == x.size(1), kOp,
              ": styles must be [N, Cin]=[", x.size(0), ", ", x.size(1), "], got ", styles.sizes());
  if (demod && demod->defined())
    TORCH_CHECK(demod->dim() == 2 && demod->size(0) == x.size(0) && demod->size(1) == weight.size(0), kOp,
                ": demod must be [N, Cout]=[", x.size(0), ", ", weight.size(0), "], got ", demod->sizes());
  TORCH_CHECK(up == 1 || up == 2, kOp, ": up must be 1 or 2, got ", up);
  const int64_t k = weight.size(2);
  TORCH_CHECK(padding >= 0, kOp, ": padding must be >= 0, got ", padding);
  // The up=2 layer's FIR stage (common/fir_upsample.h) pads the transposed convolution's [2H+1, 2W+1]
  // output by 1 per side, which is NVIDIA's conv2d_resample padding for k=3 only ((5 - k) / 2 in general);
  // every StyleGAN2 checkpoint upsamples with 3x3 kernels, so other sizes are refused, not mis-shaped.
  if (up == 2)
    TORCH_CHECK(k == 3 && padding == 1, kOp, ": up=2 needs a 3x3 kernel and padding=1, got k=", k,
                ", padding=", padding);
  check_like(weight, x, kOp, "weight");
  check_like(styles, x, kOp, "styles");
  check_like(demod, x, kOp, "demod");
}

// Which convolution runs a stride-1 modulated convolution on CUDA: cuDNN on the style-scaled input
// ("cudnn", the default), or our implicit-GEMM kernels with styles and demodulation fused ("igemm").
// An environment variable so benchmarks and tests can compare them without an API change.
bool use_cuda_igemm() {
  const char* value = std::getenv("PULSE_EXT_CUDA_CONV");
  if (value == nullptr || *value == '\0' || std::string(value) == "cudnn") return false;
  TORCH_CHECK(std::string(value) == "igemm", "PULSE_EXT_CUDA_CONV must be 'cudnn' or 'igemm', got '", value, "'");
  return true;
}

#ifdef PULSE_EXT_WITH_CUDA
// The implicit-GEMM kernels compute in x's dtype (SIMT) or, for bf16 convolutions of float32
// activations on sm_80 and newer, on tensor cores; other combinations, and a data gradient that
// would need negative padding, stay with cuDNN.
bool cuda_igemm_applies(const at::Tensor& x, int64_t k, int64_t padding, ConvDtype conv_dtype) {
  if (!x.is_cuda() || padding > k - 1 || !use_cuda_igemm()) return false;
  if (!conv_dtype || *conv_dtype == x.scalar_type()) return true;
  return *conv_dtype == at::kBFloat16 && x.scalar_type() == at::kFloat && cuda::igemm_bf16_supported(x.get_device());
}

// The tensor-core kernel's weight: bf16, tap-major [Cout, k, k, Cin] (its K steps are channels of one
// tap), of weight or, for the data gradient (adjoint), of weight flipped and transposed. PULSE convolves
// with the same frozen weights thousands of times, so the copies are kept per weight *version*: an
// entry holds a weak reference to the weight's TensorImpl (so its address cannot be reused while the
// entry lives) and the version counter it was made at, which every in-place change through autograd-
// visible ops (optimizer steps, copy_, load_state_dict) bumps. Writes through .data are not seen: a
// caller mutating weights that way while using conv_dtype=bfloat16 on CUDA must not rely on this path.
// weight [Cout, Cin, k, k] as the convolution uses it: itself, or for a data gradient (adjoint) flipped and
// transposed to [Cin, Cout, k, k] (a view).
at::Tensor oriented_weight(const at::Tensor& weight, bool adjoint) {
  return adjoint ? weight.flip({2, 3}).transpose(0, 1) : weight;
}

class Bf16WeightCache {
 public:
  at::Tensor get(const at::Tensor& weight, bool adjoint) {
    const c10::TensorImpl* impl = weight.unsafeGetTensorImpl();
    const uint32_t version = weight._version();
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->owner.expired()) {  // the weight is gone: so is its copy
        it = entries_.erase(it);
        continue;
      }
      if (it->impl == impl && it->adjoint == adjoint && it->version == version && it->sizes == weight.sizes() &&
          it->strides == weight.strides() && it->storage_offset == weight.storage_offset())
        return it->taps;
      ++it;
    }
    at::Tensor taps = oriented_weight(weight, adjoint).permute({0, 2, 3, 1}).to(at::kBFloat16).contiguous();
    // One entry per weight and direction: an older version of it is replaced, not kept.
    entries_.remove_if([&](const Entry& e) { return e.impl == impl && e.adjoint == adjoint; });
    entries_.push_front(Entry{WeakImpl(weight.getIntrusivePtr()), impl, adjoint, version, weight.sizes().vec(),
                              weight.strides().vec(), weight.storage_offset(), taps});
    while (entries_.size() > kMaxEntries) entries_.pop_back();
    return taps;
  }

 private:
  static constexpr size_t kMaxEntries = 256;  // config-f at 1024 px has 17 modulated 3x3 layers, 2 directions
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  struct Entry {
    WeakImpl owner;
    const c10::TensorImpl* impl;
    bool adjoint;
    uint32_t version;
    std::vector<int64_t> sizes, strides;
    int64_t storage_offset;
    at::Tensor taps;
  };
  std::mutex mutex_;
  std::list<Entry> entries_;
};

at::Tensor bf16_weight_taps(const at::Tensor& weight, bool adjoint) {
  static Bf16WeightCache cache;
  return cache.get(weight, adjoint);
}

template <typename T>
ModConvArgs<T> igemm_args(const at::Tensor& x, const T* weight, const std::optional<at::Tensor>& styles,
                          const std::optional<at::Tensor>& demod, const at::Tensor& y, int64_t k, int64_t padding) {
  return {x.const_data_ptr<T>(), weight, data_or_null<T>(styles), data_or_null<T>(demod), x.size(0), int(x.size(1)),
          int(x.size(2)), int(x.size(3)), int(y.size(1)), int(k), int(padding), int(y.size(2)), int(y.size(3))};
}

// demod * conv(x * styles, weight') by an implicit-GEMM kernel, where weight' is weight [Cout, Cin, k, k]
// (any strides) or, for a data gradient (adjoint), weight flipped and transposed; x contiguous NCHW,
// styles [N, Cin'] / demod [N, Cout'] contiguous or absent (= 1); stride 1.
at::Tensor cuda_igemm_conv(const at::Tensor& x, const at::Tensor& weight, bool adjoint,
                           const std::optional<at::Tensor>& styles, const std::optional<at::Tensor>& demod,
                           int64_t padding, ConvDtype conv_dtype) {
  const int64_t k = weight.size(2), ho = x.size(2) + 2 * padding - k + 1, wo = x.size(3) + 2 * padding - k + 1;
  const int64_t cout = adjoint ? weight.size(1) : weight.size(0);
  at::Tensor y = at::empty({x.size(0), cout, ho, wo}, x.options());
  if (y.numel() == 0) return y;
  if (conv_dtype && *conv_dtype != x.scalar_type()) {  // bf16 on tensor cores, x float32 (cuda_igemm_applies)
    const at::Tensor w_taps = bf16_weight_taps(weight, adjoint);
    PULSE_CALL_CUDA(x, modulated_conv2d_igemm_bf16, igemm_args<float>(x, nullptr, styles, demod, y, k, padding),
                    reinterpret_cast<const uint16_t*>(w_taps.const_data_ptr<at::BFloat16>()), y.data_ptr<float>());
    return y;
  }
  const at::Tensor w = oriented_weight(weight, adjoint).contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "modulated_conv2d_igemm", [&] {
    PULSE_CALL_CUDA(x, modulated_conv2d_igemm<scalar_t>,
                    igemm_args<scalar_t>(x, w.const_data_ptr<scalar_t>(), styles, demod, y, k, padding),
                    y.data_ptr<scalar_t>());
  });
  return y;
}
#endif

// out[n, c] = x[n, c] * scale[n, c] over each plane (out may alias x).
void scale_channels(const at::Tensor& x, const at::Tensor& scale, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_channels", [&] {
    PULSE_CALL_BACKEND(x, scale_channels<scalar_t>, x.const_data_ptr<scalar_t>(), scale.const_data_ptr<scalar_t>(),
                       out.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2) * x.size(3));
  });
}

// The device-generic form on NCHW tensors (x_c, styles_c and demod_c contiguous): the backend's
// convolution on the style-scaled input, with our kernels for the scaling, FIR and demodulation, or
// on CUDA with PULSE_EXT_CUDA_CONV=igemm our implicit-GEMM kernels, which fuse both scalings.
at::Tensor modulated_conv2d_generic(const at::Tensor& x_c, const at::Tensor& weight, const at::Tensor& styles_c,
                                    const std::optional<at::Tensor>& demod_c, int64_t up, int64_t padding,
                                    ConvDtype conv_dtype) {
  const at::Tensor& x = x_c;
#ifdef PULSE_EXT_WITH_CUDA
  if (up == 1 && cuda_igemm_applies(x, weight.size(2), padding, conv_dtype))
    return cuda_igemm_conv(x_c, weight, /*adjoint=*/false, styles_c, demod_c, padding, conv_dtype);
#endif
  at::Tensor xs = at::empty_like(x_c);
  if (x.numel() > 0) scale_channels(x_c, styles_c, xs);
  if (up == 1) {
    at::Tensor y = from_conv(at::convolution(to_conv(xs, conv_dtype), to_conv(weight, conv_dtype), std::nullopt,
                                             {1, 1}, {padding, padding}, {1, 1}, false, {0, 0}, 1),
                             x)
                       .contiguous();
    if (demod_c && y.numel() > 0) scale_channels(y, *demod_c, y);
    return y;
  }
  // up=2: stride-2 transposed convolution to [2H+1, 2W+1], then the FIR filter (x demod) to [2H, 2W].
  const at::Tensor t = from_conv(at::convolution(to_conv(xs, conv_dtype), to_conv(weight, conv_dtype).transpose(0, 1),
                                                 std::nullopt, {2, 2}, {0, 0}, {1, 1}, true, {0, 0}, 1),
                                 x)
                           .contiguous();
  at::Tensor y = at::empty({x.size(0), weight.size(0), t.size(2) - 1, t.size(3) - 1}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fir_upsample", [&] {
    PULSE_CALL_BACKEND(x, fir_upsample_forward<scalar_t>, t.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(demod_c),
                       y.data_ptr<scalar_t>(), t.size(0) * t.size(1), t.size(2), t.size(3));
  });
  return y;
}

// The data gradient of the library convolution (and, for up=2, of the FIR filter after it) wrt its
// style-scaled input, from grad [N, Cout, Ho, Wo] (contiguous in `format`: NCHW, or NHWC on the CPU's
// channels-last path); in conv_dtype when given. Each is one forward library call on grad alone (no
// input-shaped dummy for convolution_backward to read the shape from): the adjoint of a stride-1
// convolution is the transposed convolution with the same weight and padding, whose output is exactly
// [H, W] (Ho = H + 2p - k + 1); the adjoint of the up=2 layer's stride-2 transposed convolution is the
// stride-2 convolution with the same [Cin, Cout, k, k] weight, from [2H+1, 2W+1] back to [H, W].
at::Tensor library_conv_data_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, int64_t up,
                                  int64_t padding, ConvDtype conv_dtype, at::MemoryFormat format) {
  const at::Tensor weight_conv = to_conv(weight, conv_dtype);
  if (up == 1)
    return at::convolution(to_conv(grad, conv_dtype), weight_conv, std::nullopt, {1, 1}, {padding, padding}, {1, 1},
                           true, {0, 0}, 1);
  const int64_t n = grad.size(0), c = grad.size(1), ht = grad.size(2) + 1, wt = grad.size(3) + 1;
  at::Tensor grad_t = at::empty({n, c, ht, wt}, x.options().memory_format(format));
  if (grad_t.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fir_upsample_backward", [&] {
      if (format == at::MemoryFormat::ChannelsLast)
        cpu::fir_upsample_backward_nhwc<scalar_t>(grad.const_data_ptr<scalar_t>(), grad_t.data_ptr<scalar_t>(), n, c,
                                                  ht, wt);
      else
        PULSE_CALL_BACKEND(x, fir_upsample_backward<scalar_t>, grad.const_data_ptr<scalar_t>(),
                           grad_t.data_ptr<scalar_t>(), n * c, ht, wt);
    });
  }
  return at::convolution(to_conv(grad_t, conv_dtype), weight_conv.transpose(0, 1), std::nullopt, {2, 2}, {0, 0},
                         {1, 1}, false, {0, 0}, 1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulated_conv2d_backward_generic(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& x_c, const at::Tensor& weight,
    const at::Tensor& styles_c, const std::optional<at::Tensor>& demod_c, int64_t up, int64_t padding,
    ConvDtype conv_dtype) {
  const at::Tensor& x = x_c;
  const at::Tensor y_c = y.contiguous();
  at::Tensor grad_c = grad.contiguous();
  at::Tensor grad_demod = at::empty({0}, x.options());
  if (demod_c) {
    // grad wrt the un-demodulated output, and d loss / d demod = sum(grad * y) / demod, in one pass.
    at::Tensor grad_pre = at::empty_like(grad_c);
    grad_demod = at::zeros_like(*demod_c);
    if (grad_c.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "demod_backward", [&] {
        PULSE_CALL_BACKEND(x, demod_backward<scalar_t>, grad_c.const_data_ptr<scalar_t>(), y_c.const_data_ptr<scalar_t>(),
                           demod_c->const_data_ptr<scalar_t>(), grad_pre.data_ptr<scalar_t>(),
                           grad_demod.data_ptr<scalar_t>(), grad_c.size(0), grad_c.size(1),
                           grad_c.size(2) * grad_c.size(3));
      });
    }
    grad_c = grad_pre;
  }
  at::Tensor grad_xs;
#ifdef PULSE_EXT_WITH_CUDA
  const int64_t k = weight.size(2);
  if (up == 1 && cuda_igemm_applies(x, k, padding, conv_dtype)) {
    // The data gradient of a stride-1 convolution is one with the flipped, transposed weight and
    // padding k - 1 - padding; the styles are applied below, and demod already was.
    grad_xs = cuda_igemm_conv(grad_c, weight, /*adjoint=*/true, std::nullopt, std::nullopt, k - 1 - padding,
                              conv_dtype);
  }
#endif
  if (!grad_xs.defined())
    grad_xs = library_conv_data_grad(grad_c, x, weight, up, padding, conv_dtype, at::MemoryFormat::Contiguous);
  grad_xs = from_conv(grad_xs, x).contiguous();
  at::Tensor grad_x = at::empty_like(x_c);
  at::Tensor grad_styles = at::zeros_like(styles_c);
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_channels_backward", [&] {
      PULSE_CALL_BACKEND(x, scale_channels_backward<scalar_t>, grad_xs.const_data_ptr<scalar_t>(),
                         x_c.const_data_ptr<scalar_t>(), styles_c.const_data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
                         grad_styles.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2) * x.size(3));
    });
  }
  return {grad_x, grad_styles, grad_demod};
}

// ---- CPU: oneDNN runs convolutions about 3x faster on channels-last tensors (and transposed ones
// only there), so on the CPU the modulated convolution works NHWC: the style scaling writes NHWC,
// the convolution and the FIR filter run NHWC, and the output stays NHWC for noise_bias_act and the
// next layer. A 1x1 layer (toRGB) on an NHWC input is a batched matrix product with per-sample
// weights; on an NCHW input it takes the device-generic path.

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

// PULSE_EXT_CPU_LAYOUT=nchw sends CPU tensors through the device-generic NCHW path instead: the same
// orchestration and kernels' math as CUDA, which is how the CPU tests exercise them.
bool cpu_uses_channels_last() {
  const char* value = std::getenv("PULSE_EXT_CPU_LAYOUT");
  if (value == nullptr || *value == '\0' || std::string(value) == "nhwc") return true;
  TORCH_CHECK(std::string(value) == "nchw", "PULSE_EXT_CPU_LAYOUT must be 'nhwc' or 'nchw', got '", value, "'");
  return false;
}

bool is_pointwise(const at::Tensor& weight, int64_t up, int64_t padding) {
  return weight.size(2) == 1 && up == 1 && padding == 0;
}

// A 1x1 layer with at most this many output channels (toRGB: 3) runs our streaming kernels
// (cpu::pointwise_modconv_*_nhwc) on NHWC inputs in x's dtype; wider ones, or a narrower conv_dtype,
// the batched GEMM. At R = 8 the GEMM with N = 3 (forward) or K = 3 (data gradient) had taken about
// 1 ms of a 20 ms PULSE step over the five toRGB layers.
constexpr int64_t kPointwiseKernelMaxCout = 16;

bool uses_pointwise_kernel(const at::Tensor& x, const at::Tensor& weight, ConvDtype conv_dtype) {
  return weight.size(0) <= kPointwiseKernelMaxCout && (!conv_dtype || *conv_dtype == x.scalar_type());
}

// Which convolution runs the CPU's 3x3 "same" layers (stride 1, padding 1) in fp32/fp64: Winograd
// F(4x4, 3x3) with the style scaling and demodulation fused into its transforms
// (cpu/winograd_conv.cpp), or oneDNN's direct convolution around our scaling kernels. PULSE_EXT_CPU_CONV
// = auto (the default), winograd or onednn, so benchmarks and tests can compare them.
//
// auto takes Winograd for layers up to 128 x 128 channels at any size, and for wider ones from 16
// tiles of 4x4 output pixels on (e.g. 16x16 at one restart). Measured on a 2-core Zen 4, forward +
// backward against oneDNN: 1.1-3x for 128 x 128 and narrower at every batch (1 tile included); 1.7-2.5x
// for 256 x 256 and 512 x 512 from 16 tiles on; but with 1-4 tiles a wide layer's transformed filter
// (9.4 MB at 256 x 256, 38 MB at 512 x 512) costs more to read than the few tiles gain: 0.3-1.0x.
constexpr int64_t kWinogradAnySizeMaxChannelProduct = 128 * 128;
constexpr int64_t kWinogradMinTilesWhenWide = 16;
// Layers up to this many channel pairs run the cache-blocked kernel; wider ones the whole-layer passes.
constexpr int64_t kWinogradBlockedMaxChannelProduct = 256 * 256;

bool cpu_uses_winograd(const at::Tensor& x, const at::Tensor& weight, int64_t up, int64_t padding,
                       ConvDtype conv_dtype) {
  const char* value = std::getenv("PULSE_EXT_CPU_CONV");
  const std::string choice = value == nullptr || *value == '\0' ? "auto" : value;
  TORCH_CHECK(choice == "auto" || choice == "winograd" || choice == "onednn",
              "PULSE_EXT_CPU_CONV must be 'auto', 'winograd' or 'onednn', got '", choice, "'");
  const bool applicable = weight.size(2) == 3 && up == 1 && padding == 1 &&
                          (!conv_dtype || *conv_dtype == weight.scalar_type());
  if (!applicable || choice == "onednn") return false;
  if (choice == "winograd" || weight.size(0) * weight.size(1) <= kWinogradAnySizeMaxChannelProduct) return true;
  return cpu::winograd_tiles(x.size(0), x.size(2), x.size(3)) >= kWinogradMinTilesWhenWide;
}

// y [N, Cout, H, W] (NHWC memory) = out_scale * conv3x3(x * in_scale); scales [N, C] or absent.
// Layers up to 256 x 256 channels run the cache-blocked kernel (transforms and GEMMs per block of tiles,
// in L2). Wider ones run three whole-layer passes with ATen's batched GEMM (MKL) in the middle: their
// transformed filter (38 MB at 512 x 512) is then read once per transform point instead of once per
// block of tiles, which had made the blocked kernel 0.2-0.9x oneDNN there.
at::Tensor winograd_conv3x3(const at::Tensor& x_nhwc, const at::Tensor& filter, const std::optional<at::Tensor>& in_scale,
                            const std::optional<at::Tensor>& out_scale, int64_t cout) {
  const int64_t n = x_nhwc.size(0), cin = x_nhwc.size(1), h = x_nhwc.size(2), w = x_nhwc.size(3);
  at::Tensor y = at::empty({n, cout, h, w}, x_nhwc.options().memory_format(kChannelsLast));
  if (cin * cout <= kWinogradBlockedMaxChannelProduct) {
    AT_DISPATCH_FLOATING_TYPES(x_nhwc.scalar_type(), "winograd_conv3x3_nhwc", [&] {
      cpu::winograd_conv3x3_nhwc<scalar_t>(x_nhwc.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(in_scale),
                                           filter.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(out_scale),
                                           y.data_ptr<scalar_t>(), n, h, w, cin, cout);
    });
    return y;
  }
  at::Tensor transformed = at::empty({36, cpu::winograd_tiles(n, h, w), cin}, x_nhwc.options());
  AT_DISPATCH_FLOATING_TYPES(x_nhwc.scalar_type(), "winograd_input_transform_nhwc", [&] {
    cpu::winograd_input_transform_nhwc<scalar_t>(x_nhwc.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(in_scale),
                                                 transformed.data_ptr<scalar_t>(), n, h, w, cin);
  });
  const at::Tensor products = at::bmm(transformed, filter);  // [36, tiles, Cout]
  AT_DISPATCH_FLOATING_TYPES(x_nhwc.scalar_type(), "winograd_output_transform_nhwc", [&] {
    cpu::winograd_output_transform_nhwc<scalar_t>(products.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(out_scale),
                                                  y.data_ptr<scalar_t>(), n, h, w, cout);
  });
  return y;
}

// weight [Cout, Cin, 1, 1] scaled per sample by styles: [N, Cout, Cin].
at::Tensor per_sample_pointwise_weight(const at::Tensor& weight, const at::Tensor& styles) {
  return weight.reshape({1, weight.size(0), weight.size(1)}) * styles.unsqueeze(1);
}

// An NHWC tensor's memory as [N, H*W, C] (a view).
at::Tensor pixels_by_channels(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).reshape({t.size(0), t.size(2) * t.size(3), t.size(1)});
}

// [N, H*W, C] back to an NHWC tensor of logical shape [N, C, H, W] (a view).
at::Tensor as_channels_last(const at::Tensor& t3, int64_t h, int64_t w) {
  return t3.view({t3.size(0), h, w, t3.size(2)}).permute({0, 3, 1, 2});
}

at::Tensor modulated_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                                const std::optional<at::Tensor>& demod, int64_t up, int64_t padding,
                                ConvDtype conv_dtype) {
  const int64_t n = x.size(0), cin = x.size(1), cout = weight.size(0), h = x.size(2), w = x.size(3);
  if (is_pointwise(weight, up, padding)) {
    if (!is_cpu_channels_last(x))
      return modulated_conv2d_generic(x.contiguous(), weight, styles, demod, up, padding, conv_dtype);
    if (uses_pointwise_kernel(x, weight, conv_dtype)) {
      at::Tensor y = at::empty({n, cout, h, w}, x.options().memory_format(kChannelsLast));
      const at::Tensor weight_c = weight.contiguous();
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pointwise_modconv_forward_nhwc", [&] {
        cpu::pointwise_modconv_forward_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), weight_c.const_data_ptr<scalar_t>(),
                                                      styles.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(demod),
                                                      y.data_ptr<scalar_t>(), n, h * w, cin, cout);
      });
      return y;
    }
    const at::Tensor product =
        at::bmm(to_conv(pixels_by_channels(x), conv_dtype),
                to_conv(per_sample_pointwise_weight(weight, styles).transpose(1, 2), conv_dtype));
    at::Tensor y = as_channels_last(from_conv(product, x), h, w);
    if (demod) y.mul_(demod->reshape({n, cout, 1, 1}));
    return y;
  }
  const at::Tensor x_nhwc = x.contiguous(kChannelsLast);
  if (cpu_uses_winograd(x, weight, up, padding, conv_dtype))
    return winograd_conv3x3(x_nhwc, winograd_filter(weight, /*adjoint=*/false), styles, demod, cout);
  at::Tensor xs = at::empty(x.sizes(), x.options().memory_format(kChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_channels_nhwc", [&] {
    cpu::scale_channels_nhwc<scalar_t>(x_nhwc.const_data_ptr<scalar_t>(), styles.const_data_ptr<scalar_t>(),
                                       xs.data_ptr<scalar_t>(), n, cin, h * w);
  });
  const at::Tensor xs_conv = to_conv(xs, conv_dtype), weight_conv = to_conv(weight, conv_dtype);
  if (up == 1) {
    at::Tensor y = from_conv(at::convolution(xs_conv, weight_conv, std::nullopt, {1, 1}, {padding, padding}, {1, 1},
                                             false, {0, 0}, 1),
                             x)
                       .contiguous(kChannelsLast);
    if (demod) y.mul_(demod->reshape({n, cout, 1, 1}));
    return y;
  }
  const at::Tensor t = from_conv(at::convolution(xs_conv, weight_conv.transpose(0, 1), std::nullopt, {2, 2}, {0, 0},
                                                 {1, 1}, true, {0, 0}, 1),
                                 x)
                           .contiguous(kChannelsLast);
  at::Tensor y = at::empty({n, cout, t.size(2) - 1, t.size(3) - 1}, x.options().memory_format(kChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fir_upsample_nhwc", [&] {
    cpu::fir_upsample_forward_nhwc<scalar_t>(t.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(demod),
                                             y.data_ptr<scalar_t>(), n, cout, t.size(2), t.size(3));
  });
  return y;
}

// From the gradient wrt the style-scaled input (NHWC): grad_x = grad_xs * s, grad_s = sum over pixels of
// grad_xs * x; returned with grad_demod as the backward's result.
std::tuple<at::Tensor, at::Tensor, at::Tensor> scale_channels_backward_nhwc(const at::Tensor& grad_xs,
                                                                           const at::Tensor& x_nhwc,
                                                                           const at::Tensor& styles,
                                                                           const at::Tensor& grad_demod) {
  const int64_t n = x_nhwc.size(0), cin = x_nhwc.size(1), hw = x_nhwc.size(2) * x_nhwc.size(3);
  at::Tensor grad_x = at::empty(x_nhwc.sizes(), x_nhwc.options().memory_format(kChannelsLast));
  at::Tensor grad_styles = at::empty({n, cin}, x_nhwc.options());
  AT_DISPATCH_FLOATING_TYPES(x_nhwc.scalar_type(), "scale_channels_backward_nhwc", [&] {
    cpu::scale_channels_backward_nhwc<scalar_t>(grad_xs.const_data_ptr<scalar_t>(), x_nhwc.const_data_ptr<scalar_t>(),
                                                styles.const_data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
                                                grad_styles.data_ptr<scalar_t>(), n, cin, hw);
  });
  return {grad_x, grad_styles, grad_demod};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulated_conv2d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& styles, const std::optional<at::Tensor>& demod, int64_t up, int64_t padding,
    ConvDtype conv_dtype) {
  const int64_t n = x.size(0), cin = x.size(1), cout = weight.size(0), h = x.size(2), w = x.size(3);
  const bool pointwise = is_pointwise(weight, up, padding);
  if (pointwise && !is_cpu_channels_last(x))
    return modulated_conv2d_backward_generic(grad, y, x.contiguous(), weight, styles, demod, up, padding, conv_dtype);
  at::Tensor g = grad.contiguous(kChannelsLast);
  at::Tensor grad_demod = at::empty({0}, x.options());
  const at::Tensor x_nhwc = x.contiguous(kChannelsLast);
  // d loss / d demod = sum(grad * y) / demod
  if (demod) grad_demod = (g * y).sum({2, 3}) / *demod;
  if (pointwise && uses_pointwise_kernel(x, weight, conv_dtype)) {
    at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(kChannelsLast));
    at::Tensor grad_styles = at::empty({n, cin}, x.options());
    const at::Tensor weight_c = weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pointwise_modconv_backward_nhwc", [&] {
      cpu::pointwise_modconv_backward_nhwc<scalar_t>(
          g.const_data_ptr<scalar_t>(), x_nhwc.const_data_ptr<scalar_t>(), weight_c.const_data_ptr<scalar_t>(),
          styles.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(demod), grad_x.data_ptr<scalar_t>(),
          grad_styles.data_ptr<scalar_t>(), n, h * w, cin, cout);
    });
    return {grad_x, grad_styles, grad_demod};
  }
  if (cpu_uses_winograd(x, weight, up, padding, conv_dtype)) {
    // The data gradient: the convolution with the flipped, transposed filter, demod scaling its input.
    const at::Tensor grad_xs = winograd_conv3x3(g, winograd_filter(weight, /*adjoint=*/true), demod, std::nullopt, cin);
    return scale_channels_backward_nhwc(grad_xs, x_nhwc, styles, grad_demod);
  }
  // The gradient of the un-demodulated output.
  if (demod) g = (g * demod->reshape({n, cout, 1, 1})).contiguous(kChannelsLast);
  if (pointwise) {
    const at::Tensor g3 = pixels_by_channels(g), x3 = pixels_by_channels(x_nhwc);
    at::Tensor grad_x = as_channels_last(
        from_conv(
            at::bmm(to_conv(g3, conv_dtype), to_conv(per_sample_pointwise_weight(weight, styles), conv_dtype)), x),
        h, w);
    // grad_s[n, i] = sum_o weight[o, i] * sum_p grad[n, o, p] x[n, i, p] (a reduction over pixels: kept in x's dtype)
    at::Tensor grad_styles = (at::bmm(g3.transpose(1, 2), x3) * weight.reshape({1, cout, cin})).sum(1);
    return {grad_x, grad_styles, grad_demod};
  }
  const at::Tensor grad_xs = library_conv_data_grad(g, x, weight, up, padding, conv_dtype, kChannelsLast);
  return scale_channels_backward_nhwc(from_conv(grad_xs, x).contiguous(kChannelsLast), x_nhwc, styles, grad_demod);
}

at::Tensor modulated_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                            const std::optional<at::Tensor>& demod, int64_t up, int64_t padding, ConvDtype conv_dtype) {
  const c10::DeviceGuard guard(x.device());
  check_inputs(x, weight, styles, demod, up, padding, conv_dtype);
  if (!x.is_cuda() && x.numel() > 0 && cpu_uses_channels_last())
    return modulated_conv2d_cpu(x, weight, styles.contiguous(), contiguous_or_none(demod), up, padding, conv_dtype);
  return modulated_conv2d_generic(x.contiguous(), weight, styles.contiguous(), contiguous_or_none(demod), up, padding,
                                  conv_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulated_conv2d_backward(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
    const std::optional<at::Tensor>& demod, int64_t up, int64_t padding, ConvDtype conv_dtype) {
  const c10::DeviceGuard guard(x.device());
  check_inputs(x, weight, styles, demod, up, padding, conv_dtype);
  TORCH_CHECK(grad.sizes() == y.sizes(), "modulated_conv2d_backward: grad ", grad.sizes(), " must match y ", y.sizes());
  check_like(grad, x, "modulated_conv2d_backward", "grad");
  check_like(y, x, "modulated_conv2d_backward", "y");
  if (!x.is_cuda() && x.numel() > 0 && grad.numel() > 0 && cpu_uses_channels_last())
    return modulated_conv2d_backward_cpu(grad, y, x, weight, styles.contiguous(), contiguous_or_none(demod), up,
                                         padding, conv_dtype);
  return modulated_conv2d_backward_generic(grad, y, x.contiguous(), weight, styles.contiguous(),
                                           contiguous_or_none(demod), up, padding, conv_dtype);
}

// d loss / d weight. PULSE never needs it (its weights are frozen); training-style callers may. One
// library weight-gradient convolution on the NCHW style-scaled input: y = d * conv(x * s, W) (up=1), or
// d * FIR(conv_transpose(x * s, W^T)) (up=2, through the FIR's adjoint), or a sum of outer products (1x1).
at::Tensor modulated_conv2d_weight_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                        const at::Tensor& styles, const std::optional<at::Tensor>& demod, int64_t up,
                                        int64_t padding, ConvDtype conv_dtype) {
  const c10::DeviceGuard guard(x.device());
  check_inputs(x, weight, styles, demod, up, padding, conv_dtype);
  check_like(grad, x, "modulated_conv2d_weight_grad", "grad");
  const int64_t n = x.size(0), cout = weight.size(0);
  const at::Tensor xs = (x * styles.reshape({n, x.size(1), 1, 1})).contiguous();
  at::Tensor g = demod && demod->defined() ? grad * demod->reshape({n, cout, 1, 1}) : grad;
  g = g.contiguous();
  if (is_pointwise(weight, up, padding)) {
    // grad_w[o, i] = sum over (n, pixel) of g[n, o, p] * xs[n, i, p]
    const at::Tensor g2 = g.reshape({n, cout, -1}), x2 = xs.reshape({n, x.size(1), -1});
    return from_conv(at::bmm(to_conv(g2, conv_dtype), to_conv(x2, conv_dtype).transpose(1, 2)), x)
        .sum(0)
        .reshape(weight.sizes());
  }
  if (up == 1)
    return from_conv(std::get<1>(at::convolution_backward(to_conv(g, conv_dtype), to_conv(xs, conv_dtype),
                                                           to_conv(weight, conv_dtype), std::nullopt, {1, 1},
                                                           {padding, padding}, {1, 1}, false, {0, 0}, 1,
                                                           {false, true, false})),
                     x);
  at::Tensor grad_t = at::empty({n, cout, g.size(2) + 1, g.size(3) + 1}, x.options());
  if (grad_t.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fir_upsample_backward", [&] {
      PULSE_CALL_BACKEND(x, fir_upsample_backward<scalar_t>, g.const_data_ptr<scalar_t>(), grad_t.data_ptr<scalar_t>(),
                         grad_t.size(0) * grad_t.size(1), grad_t.size(2), grad_t.size(3));
    });
  }
  const at::Tensor grad_wt = std::get<1>(at::convolution_backward(
      to_conv(grad_t, conv_dtype), to_conv(xs, conv_dtype), to_conv(weight, conv_dtype).transpose(0, 1),
      std::nullopt, {2, 2}, {0, 0}, {1, 1}, true, {0, 0}, 1, {false, true, false}));
  return from_conv(grad_wt, x).transpose(0, 1).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(pulse_ext, CPU, m) {
  m.impl("modulated_conv2d", &modulated_conv2d);
  m.impl("modulated_conv2d_backward", &modulated_conv2d_backward);
  m.impl("modulated_conv2d_weight_grad", &modulated_conv2d_weight_grad);
}

#ifdef PULSE_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(pulse_ext, CUDA, m) {
  m.impl("modulated_conv2d", &modulated_conv2d);
  m.impl("modulated_conv2d_backward", &modulated_conv2d_backward);
  m.impl("modulated_conv2d_weight_grad", &modulated_conv2d_weight_grad);
}
#endif

}  // namespace pulse_ext
