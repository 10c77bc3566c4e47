// CPU kernels of the area-downscale loss.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/area_downscale.h"
#include "../kernels.h"
#include "cpu_common.h"

namespace pulse_ext::cpu {

// (n, c, i) of output row `row` = (n * C + c) * h + i, computed once per task and then advanced row by
// row: 64-bit divisions cost 40-90 cycles on some x86 cores, and one per row had dominated these loops.
struct OutputRow {
  int64_t n, c, i;
  OutputRow(int64_t row, int64_t C, int64_t h) : n(row / h / C), c(row / h % C), i(row % h) {}
  void advance(int64_t C, int64_t h) {
    if (++i < h) return;
    i = 0;
    if (++c < C) return;
    c = 0;
    ++n;
  }
};

// One task per output row (n, c, i): sum its fh image rows column block by column block, so every
// image element is read once, in order.
template <typename T>
void area_downscale_forward(const AreaDownscaleArgs<T>& a, T* diff, T* sq_partial, T* abs_partial) {
  const int64_t fh = a.H / a.h, fw = a.W / a.w;
  const double inv_area = 1.0 / double(fh * fw);
  at::parallel_for(0, a.N * a.C * a.h, grain_for(fh * a.W), [&](int64_t begin, int64_t end) {
    std::vector<double> col_sum(a.W);
    OutputRow at(begin, a.C, a.h);
    for (int64_t row = begin; row < end; ++row, at.advance(a.C, a.h)) {
      std::fill(col_sum.begin(), col_sum.end(), 0.0);
      const T* img = a.img + row * fh * a.W;  // image row (n * C + c) * H + i * fh
      for (int64_t r = 0; r < fh; ++r)
        for (int64_t x = 0; x < a.W; ++x) col_sum[x] += img[r * a.W + x];
      const T* target = a.target + (((a.target_batch == 1 ? 0 : at.n) * a.C + at.c) * a.h + at.i) * a.w;
      T* out = diff + row * a.w;
      double sq = 0, ab = 0;
      for (int64_t j = 0; j < a.w; ++j) {
        double block = 0;
        for (int64_t x = j * fw; x < (j + 1) * fw; ++x) block += col_sum[x];
        const T dv = T(block * inv_area) - target[j];
        out[j] = dv;
        sq += double(dv) * dv;
        ab += std::abs(double(dv));
      }
      sq_partial[row] = T(sq);
      abs_partial[row] = T(ab);
    }
  });
}

// One task per output row (n, c, i): the gradient of its w blocks, written to the first of its fh image
// rows and copied to the others.
template <typename T>
void area_downscale_backward(const T* diff, const T* scale2, const T* scale1, T* grad_img, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t h, int64_t w) {
  const int64_t fh = H / h, fw = W / w;
  at::parallel_for(0, N * C * h, grain_for(fh * W), [&](int64_t begin, int64_t end) {
    OutputRow at(begin, C, h);
    for (int64_t row = begin; row < end; ++row, at.advance(C, h)) {
      const T* d = diff + row * w;
      const T s2 = scale2[at.n], s1 = scale1[at.n];
      T* out = grad_img + row * fh * W;
      for (int64_t j = 0; j < w; ++j) {
        const T g = area_downscale_loss_grad(d[j], s2, s1);
        for (int64_t x = j * fw; x < (j + 1) * fw; ++x) out[x] = g;
      }
      for (int64_t r = 1; r < fh; ++r) std::copy(out, out + W, out + r * W);
    }
  });
}

#define INSTANTIATE(T)                                                                                        \
  template void area_downscale_forward<T>(const AreaDownscaleArgs<T>&, T*, T*, T*);                          \
  template void area_downscale_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, \
                                           int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cpu
