// CPU kernels of the area-downscale loss.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "../common/area_downscale.h"
#include "../kernels.h"
#include "cpu_common.h"

namespace pulse_ext::cpu {

// One task per output row (n, c, i): sum its fh image rows column block by column block, so every
// image element is read once, in order.
template <typename T>
void area_downscale_forward(const AreaDownscaleArgs<T>& a, T* diff, T* sq_partial, T* abs_partial) {
  const int64_t fh = a.H / a.h, fw = a.W / a.w;
  const double inv_area = 1.0 / double(fh * fw);
  at::parallel_for(0, a.N * a.C * a.h, grain_for((a.H / a.h) * a.W), [&](int64_t begin, int64_t end) {
    std::vector<double> col_sum(a.W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % a.h, plane = row / a.h, c = plane % a.C, n = plane / a.C;
      std::fill(col_sum.begin(), col_sum.end(), 0.0);
      const T* img = a.img + (plane * a.H + i * fh) * a.W;
      for (int64_t r = 0; r < fh; ++r)
        for (int64_t x = 0; x < a.W; ++x) col_sum[x] += img[r * a.W + x];
      const T* target = a.target + (((a.target_batch == 1 ? 0 : n) * a.C + c) * a.h + i) * a.w;
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

template <typename T>
void area_downscale_backward(const T* diff, const T* scale2, const T* scale1, T* grad_img, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t h, int64_t w) {
  const int64_t fh = H / h, fw = W / w;
  at::parallel_for(0, N * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
    std::vector<T> row_grad(w);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t y = row % H, plane = row / H, n = plane / C;
      const T* d = diff + (plane * h + y / fh) * w;
      for (int64_t j = 0; j < w; ++j) row_grad[j] = area_downscale_loss_grad(d[j], scale2[n], scale1[n]);
      T* out = grad_img + row * W;
      for (int64_t j = 0; j < w; ++j)
        for (int64_t x = j * fw; x < (j + 1) * fw; ++x) out[x] = row_grad[j];
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
