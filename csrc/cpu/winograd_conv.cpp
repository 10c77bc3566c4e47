// 3x3 stride-1 convolutions with padding 1 on NHWC tensors by Winograd's minimal filtering
// F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//
// Why: on the CPU the PULSE step is bound by its 3x3 convolutions, which oneDNN already runs near
// the fp32 FMA rate. F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36
// multiplications per (input, output) channel pair instead of 144: the product becomes 36
// independent GEMMs, one per transform point, of [tiles, Cin] x [Cin, Cout].
//
// How: tiles are processed in blocks small enough that the block's transformed input V
// ([36][tiles][Cin]) and product M ([36][tiles][Cout]) stay in the core's L2 cache. Per block:
//   1. input transform  V = B^T d B of every 6x6 input tile, each channel times in_scale[n, c]
//      (the modulation's style scaling, fused here instead of a separate pass);
//   2. 36 GEMMs         M[p] = V[p] U[p], U = G g G^T the transformed 3x3 filter;
//   3. output transform Y = A^T M A, times out_scale[n, k] (demodulation), written to the output.
// Every inner loop runs along channels, which NHWC keeps contiguous, so they vectorise.
//
// Accuracy: the transforms use the points 0, +-1, +-2; in fp32 the result differs from a direct
// convolution by about 1e-6 of the output's magnitude (tests bound it against the reference).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernels.h"
#include "cpu_common.h"

namespace pulse_ext::cpu {
namespace {

constexpr int kTile = 4;                // output pixels per tile side
constexpr int kAlpha = kTile + 3 - 1;   // input pixels per tile side
constexpr int kPoints = kAlpha * kAlpha;

// Channels handled at once by the transforms: a [6][6][kChunk] working set stays in L1.
constexpr int64_t kChunk = 64;

// ---------------------------------------------------------------------------------------- transforms

// u_p = (G g)_p, the filter transform along one axis (3 taps -> 6 points), for vectors of `len`
// elements: g_a at g + a * g_stride, u_p at u + p * u_stride.
template <typename T>
PULSE_CPU_INLINE void filter_transform_1d(const T* __restrict g, int64_t g_stride, T* __restrict u, int64_t u_stride,
                                          int64_t len) {
  for (int64_t l = 0; l < len; ++l) {
    const T g0 = g[l], g1 = g[g_stride + l], g2 = g[2 * g_stride + l];
    u[l] = g0 / T(4);
    u[u_stride + l] = -(g0 + g1 + g2) / T(6);
    u[2 * u_stride + l] = -(g0 - g1 + g2) / T(6);
    u[3 * u_stride + l] = g0 / T(24) + g1 / T(12) + g2 / T(6);
    u[4 * u_stride + l] = g0 / T(24) - g1 / T(12) + g2 / T(6);
    u[5 * u_stride + l] = g2;
  }
}

// One input channel of the filter transform, vectorised over the conv_out output channels: taps
// (a, b) of output channel co at w[co * co_stride + a * 3 + b] (flipped when adjoint); writes
// (G g G^T)[p] to U[p * point_stride + co]. scratch: 27 * conv_out elements.
template <typename T>
PULSE_CPU_MULTIVERSION void filter_transform_channel(const T* w, int64_t co_stride, bool adjoint, int64_t conv_out,
                                                     T* scratch, T* U, int64_t point_stride) {
  T* taps = scratch;                     // [3][3][conv_out]
  T* rows = scratch + 9 * conv_out;      // [6][3][conv_out]: G along the filter's rows
  for (int tap = 0; tap < 9; ++tap) {
    const int source = adjoint ? 8 - tap : tap;
    T* __restrict dst = taps + tap * conv_out;
    for (int64_t co = 0; co < conv_out; ++co) dst[co] = w[co * co_stride + source];
  }
  for (int b = 0; b < 3; ++b)
    filter_transform_1d(taps + b * conv_out, 3 * conv_out, rows + b * conv_out, 3 * conv_out, conv_out);
  for (int p = 0; p < 6; ++p)
    filter_transform_1d(rows + p * 3 * conv_out, conv_out, U + p * kAlpha * point_stride, point_stride, conv_out);
}

// The data transform of one 6-point column: r = B^T d (the one definition of B^T here).
template <typename T>
PULSE_CPU_INLINE void input_points(T d0, T d1, T d2, T d3, T d4, T d5, T& r0, T& r1, T& r2, T& r3, T& r4, T& r5) {
  r0 = T(4) * d0 - T(5) * d2 + d4;
  r1 = d3 + d4 - T(4) * (d1 + d2);
  r2 = d4 - d3 + T(4) * (d1 - d2);
  r3 = d4 - d2 + T(2) * (d3 - d1);
  r4 = d4 - d2 + T(2) * (d1 - d3);
  r5 = T(4) * d1 - T(5) * d3 + d5;
}

// The inverse transform of one 6-point column: o = A^T m, 4 outputs (the one definition of A^T here).
template <typename T>
PULSE_CPU_INLINE void output_points(T m0, T m1, T m2, T m3, T m4, T m5, T& o0, T& o1, T& o2, T& o3) {
  const T sum12 = m1 + m2, diff12 = m1 - m2, sum34 = m3 + m4, diff34 = m3 - m4;
  o0 = m0 + sum12 + sum34;
  o1 = diff12 + T(2) * diff34;
  o2 = sum12 + T(4) * sum34;
  o3 = diff12 + T(8) * diff34 + m5;
}

// r_i = (B^T d)_i for 6 vectors of `len` elements: d_j at d + j * in_stride, r_i at r + i * out_stride.
// ivdep: the six output rows never overlap (out_stride >= len), which GCC cannot prove from a run-time
// stride; without it the loop stayed scalar and was the slowest part of the 32-channel layers.
template <typename T>
PULSE_CPU_INLINE void input_transform_1d(const T* __restrict d, int64_t in_stride, T* __restrict r,
                                         int64_t out_stride, int64_t len) {
#pragma GCC ivdep
  for (int64_t l = 0; l < len; ++l)
    input_points(d[l], d[in_stride + l], d[2 * in_stride + l], d[3 * in_stride + l], d[4 * in_stride + l],
                 d[5 * in_stride + l], r[l], r[out_stride + l], r[2 * out_stride + l], r[3 * out_stride + l],
                 r[4 * out_stride + l], r[5 * out_stride + l]);
}

// o_i = (A^T m)_i, i < 4, for 6 vectors of `len` elements: m_j at m + j * in_stride, o_i at o + i * out_stride
// (ivdep as in input_transform_1d).
template <typename T>
PULSE_CPU_INLINE void output_transform_1d(const T* __restrict m, int64_t in_stride, T* __restrict o,
                                          int64_t out_stride, int64_t len) {
#pragma GCC ivdep
  for (int64_t l = 0; l < len; ++l)
    output_points(m[l], m[in_stride + l], m[2 * in_stride + l], m[3 * in_stride + l], m[4 * in_stride + l],
                  m[5 * in_stride + l], o[l], o[out_stride + l], o[2 * out_stride + l], o[3 * out_stride + l]);
}

// r_i = (B^T d)_i where d_j = rows[j][l] * scale[l]: the input transform along a tile's column, read
// straight from the input's pixels (a pixel outside the image points at zeros).
template <typename T>
PULSE_CPU_INLINE void input_transform_gather(const T* const rows[6], const T* __restrict scale, T* __restrict r,
                                             int64_t out_stride, int64_t len) {
  const T *__restrict p0 = rows[0], *__restrict p1 = rows[1], *__restrict p2 = rows[2], *__restrict p3 = rows[3],
          *__restrict p4 = rows[4], *__restrict p5 = rows[5];
  for (int64_t l = 0; l < len; ++l) {
    const T s = scale[l];
    input_points(p0[l] * s, p1[l] * s, p2[l] * s, p3[l] * s, p4[l] * s, p5[l] * s, r[l], r[out_stride + l],
                 r[2 * out_stride + l], r[3 * out_stride + l], r[4 * out_stride + l], r[5 * out_stride + l]);
  }
}

// dst[i][l] = (A^T m)_i * scale[l], i < 4, the output transform along a tile's row written straight to
// the output's pixels (a pixel outside the image points at a scratch row of its own).
template <typename T>
PULSE_CPU_INLINE void output_transform_scatter(const T* __restrict m, int64_t in_stride, T* const dst[4],
                                               const T* __restrict scale, int64_t len) {
  T *__restrict o0 = dst[0], *__restrict o1 = dst[1], *__restrict o2 = dst[2], *__restrict o3 = dst[3];
  for (int64_t l = 0; l < len; ++l) {
    T r0, r1, r2, r3;
    output_points(m[l], m[in_stride + l], m[2 * in_stride + l], m[3 * in_stride + l], m[4 * in_stride + l],
                  m[5 * in_stride + l], r0, r1, r2, r3);
    const T s = scale[l];
    o0[l] = r0 * s;
    o1[l] = r1 * s;
    o2[l] = r2 * s;
    o3[l] = r3 * s;
  }
}

// ---------------------------------------------------------------------------------------------- GEMM
//
// One GEMM per transform point, [rows, Cin] x [Cin, Cout], with register tiles sized for the
// instruction set: kBytes-wide vectors (64: AVX-512, 32: AVX2 + FMA, 16: baseline SSE2) and as many
// accumulators as its register file holds. Each instruction set gets its own function (compiled with
// target attributes, picked at run time) rather than a target_clones clone: GCC's "avx2" clone would
// not use FMA, and its tiles need a size per register file.

template <typename T, int kBytes>
struct Vec {
  typedef T type __attribute__((vector_size(kBytes)));
};

// out[r][j] = sum_c a[r][c] * b[c][j] for kRows rows and kVecs vectors of columns (row strides lda,
// ldb, ldo). The kRows x kVecs accumulators are vector variables, so they live in registers.
template <typename T, int kBytes, int kRows, int kVecs>
PULSE_CPU_INLINE void gemm_tile(const T* __restrict a, int64_t lda, const T* __restrict b, int64_t ldb,
                                T* __restrict out, int64_t ldo, int64_t depth) {
  using V = typename Vec<T, kBytes>::type;
  constexpr int kLanes = int(sizeof(V) / sizeof(T));
  V acc[kRows][kVecs];
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) acc[r][v] = V{};
  for (int64_t c = 0; c < depth; ++c) {
    V bv[kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) std::memcpy(&bv[v], b + c * ldb + v * kLanes, sizeof(V));
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const T av = a[r * lda + c];
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) acc[r][v] += av * bv[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) std::memcpy(out + r * ldo + v * kLanes, &acc[r][v], sizeof(V));
}

// The same for any rows and columns (the edges of the product), plain loops.
template <typename T>
PULSE_CPU_INLINE void gemm_edge(const T* __restrict a, int64_t lda, const T* __restrict b, int64_t ldb,
                                T* __restrict out, int64_t ldo, int64_t rows, int64_t cols, int64_t depth) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict o = out + r * ldo;
    std::fill(o, o + cols, T(0));
    for (int64_t c = 0; c < depth; ++c) {
      const T av = a[r * lda + c];
      const T* __restrict brow = b + c * ldb;
      for (int64_t j = 0; j < cols; ++j) o[j] += av * brow[j];
    }
  }
}

// Columns [j, j + kVecs vectors) of out for all rows: register tiles of kRows rows, plain loops for the rest.
template <typename T, int kBytes, int kRows, int kVecs>
PULSE_CPU_INLINE void gemm_columns(const T* a, const T* b, T* out, int64_t rows, int64_t cols, int64_t depth,
                                   int64_t j) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows)
    gemm_tile<T, kBytes, kRows, kVecs>(a + r * depth, depth, b + j, cols, out + r * cols + j, cols, depth);
  if (r < rows)
    gemm_edge(a + r * depth, depth, b + j, cols, out + r * cols + j, cols, rows - r, int64_t(kVecs * kBytes / sizeof(T)),
              depth);
}

// out [rows, cols] = a [rows, depth] x b [depth, cols], all row-major and contiguous. Register tiles
// of 6 rows x 4 vectors (24 of AVX-512's 32 registers) or 6 x 2 (12 of the 16 AVX2 / SSE ones), then
// 12 x 2 and 12 x 1 for narrower column tails (the 32- and 16-channel layers), plain loops for the
// rest. Rows in multiples of 12 never reach the plain loops' row edge (the caller pads them).
template <typename T, int kBytes>
PULSE_CPU_INLINE void gemm_body(const T* a, const T* b, T* out, int64_t rows, int64_t cols, int64_t depth) {
  constexpr int64_t kLanes = kBytes / sizeof(T);
  constexpr int kWide = kBytes == 64 ? 4 : 2;
  int64_t j = 0;
  for (; j + kWide * kLanes <= cols; j += kWide * kLanes)
    gemm_columns<T, kBytes, 6, kWide>(a, b, out, rows, cols, depth, j);
  if constexpr (kWide > 2)
    for (; j + 2 * kLanes <= cols; j += 2 * kLanes) gemm_columns<T, kBytes, 12, 2>(a, b, out, rows, cols, depth, j);
  for (; j + kLanes <= cols; j += kLanes) gemm_columns<T, kBytes, 12, 1>(a, b, out, rows, cols, depth, j);
  if (j < cols) gemm_edge(a, depth, b + j, cols, out + j, cols, rows, cols - j, depth);
}

template <typename T>
using GemmFunction = void (*)(const T*, const T*, T*, int64_t, int64_t, int64_t);

template <typename T>
void gemm_baseline(const T* a, const T* b, T* out, int64_t rows, int64_t cols, int64_t depth) {
  gemm_body<T, 16>(a, b, out, rows, cols, depth);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PULSE_WINOGRAD_X86_GEMMS 1
template <typename T>
__attribute__((target("avx512f"))) void gemm_avx512(const T* a, const T* b, T* out, int64_t rows, int64_t cols,
                                                     int64_t depth) {
  gemm_body<T, 64>(a, b, out, rows, cols, depth);
}

template <typename T>
__attribute__((target("avx2,fma"))) void gemm_avx2(const T* a, const T* b, T* out, int64_t rows, int64_t cols,
                                                   int64_t depth) {
  gemm_body<T, 32>(a, b, out, rows, cols, depth);
}
#endif

// The GEMM for this CPU, or the one PULSE_EXT_CPU_GEMM names (auto | avx512 | avx2 | baseline: so tests
// and benchmarks can run each kernel on one machine).
template <typename T>
GemmFunction<T> gemm_for_this_cpu() {
  const char* value = std::getenv("PULSE_EXT_CPU_GEMM");
  const std::string choice = value == nullptr || *value == '\0' ? "auto" : value;
  TORCH_CHECK(choice == "auto" || choice == "avx512" || choice == "avx2" || choice == "baseline",
              "PULSE_EXT_CPU_GEMM must be 'auto', 'avx512', 'avx2' or 'baseline', got '", choice, "'");
#ifdef PULSE_WINOGRAD_X86_GEMMS
  const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2") &&
                                                                 __builtin_cpu_supports("fma");
  TORCH_CHECK(choice != "avx512" || avx512, "PULSE_EXT_CPU_GEMM=avx512, but this CPU has no AVX-512");
  TORCH_CHECK(choice != "avx2" || avx2, "PULSE_EXT_CPU_GEMM=avx2, but this CPU has no AVX2 + FMA");
  if (choice == "avx512" || (choice == "auto" && avx512)) return gemm_avx512<T>;
  if (choice == "avx2" || (choice == "auto" && avx2)) return gemm_avx2<T>;
#else
  TORCH_CHECK(choice == "auto" || choice == "baseline", "PULSE_EXT_CPU_GEMM=", choice,
              " needs an x86-64 build; this one has only the baseline GEMM");
#endif
  return gemm_baseline<T>;
}

// ------------------------------------------------------------------------------------- tile blocks

struct TileGrid {
  int64_t N, H, W, tiles_h, tiles_w;
  static TileGrid of(int64_t N, int64_t H, int64_t W) {
    return TileGrid{N, H, W, (H + kTile - 1) / kTile, (W + kTile - 1) / kTile};
  }
  int64_t count() const { return N * tiles_h * tiles_w; }
  // Sample, first output row and first output column of tile t.
  void locate(int64_t t, int64_t& n, int64_t& row, int64_t& col) const {
    n = t / (tiles_h * tiles_w);
    const int64_t in_sample = t % (tiles_h * tiles_w);
    row = (in_sample / tiles_w) * kTile;
    col = (in_sample % tiles_w) * kTile;
  }
};

// Scratch a thread's transforms need: a [6][6][kChunk] intermediate, then rows of kChunk: zeros and ones
// (input), ones and 4 sinks (output; one per pixel, so that no two outputs alias).
constexpr int64_t kScratch = (kPoints + 5) * kChunk;

// V[p][b][c], b < count, for the tiles [first, first + count): B^T d B of each 6x6 input tile d, times
// in_scale. V[p] has `rows` rows (V[p][b] at V + (p * rows + b) * C).
template <typename T>
PULSE_CPU_MULTIVERSION void transform_input_block(const T* x, const T* in_scale, const TileGrid& grid, int64_t C,
                                                  int64_t first, int64_t count, int64_t rows, T* V, T* scratch) {
  T* t = scratch;                               // [6][6][kChunk]: B^T d
  T* zeros = scratch + kPoints * kChunk;        // the pixels outside the image
  T* ones = zeros + kChunk;                     // in_scale when there is none
  std::fill(zeros, zeros + kChunk, T(0));
  std::fill(ones, ones + kChunk, T(1));
  for (int64_t b = 0; b < count; ++b) {
    int64_t n, row, col;
    grid.locate(first + b, n, row, col);
    for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
      const int64_t len = std::min(kChunk, C - c0);
      const T* s = in_scale ? in_scale + n * C + c0 : ones;
      // Along the tile's columns (index i), read from the input; then along its rows (index j)
      // straight into V[i * 6 + j].
      for (int j = 0; j < kAlpha; ++j) {
        const int64_t w = col - 1 + j;
        const T* rows[kAlpha];
        for (int i = 0; i < kAlpha; ++i) {
          const int64_t h = row - 1 + i;
          const bool inside = h >= 0 && h < grid.H && w >= 0 && w < grid.W;
          rows[i] = inside ? x + ((n * grid.H + h) * grid.W + w) * C + c0 : zeros;
        }
        input_transform_gather(rows, s, t + j * kChunk, kAlpha * kChunk, len);
      }
      for (int i = 0; i < kAlpha; ++i)
        input_transform_1d(t + i * kAlpha * kChunk, kChunk, V + (i * kAlpha * rows + b) * C + c0, rows * C, len);
    }
  }
}

// y for the tiles [first, first + count): A^T M A of each tile's 6x6 products, times out_scale. M[p]
// has `rows` rows (M[p][b] at M + (p * rows + b) * K).
template <typename T>
PULSE_CPU_MULTIVERSION void transform_output_block(const T* M, const T* out_scale, const TileGrid& grid, int64_t K,
                                                   int64_t first, int64_t count, int64_t rows, T* y, T* scratch) {
  T* o = scratch;                               // [4][6][kChunk]: A^T M
  T* ones = scratch + kPoints * kChunk;         // out_scale when there is none
  T* sinks = ones + kChunk;                     // [4][kChunk]: the pixels outside the image
  std::fill(ones, ones + kChunk, T(1));
  for (int64_t b = 0; b < count; ++b) {
    int64_t n, row, col;
    grid.locate(first + b, n, row, col);
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t len = std::min(kChunk, K - k0);
      const T* s = out_scale ? out_scale + n * K + k0 : ones;
      // Along the columns (M[i * 6 + j] over i), then along each output row straight into y.
      for (int j = 0; j < kAlpha; ++j)
        output_transform_1d(M + (j * rows + b) * K + k0, kAlpha * rows * K, o + j * kChunk, kAlpha * kChunk, len);
      for (int i = 0; i < kTile && row + i < grid.H; ++i) {
        T* dst[kTile];
        for (int j = 0; j < kTile; ++j)
          dst[j] = col + j < grid.W ? y + ((n * grid.H + row + i) * grid.W + col + j) * K + k0 : sinks + j * kChunk;
        output_transform_scatter(o + i * kAlpha * kChunk, kChunk, dst, s, len);
      }
    }
  }
}

// Tiles per block: V and M of a block ([36][tiles][Cin + Cout]) take about half of a 1 MiB L2.
template <typename T>
int64_t tiles_per_block(int64_t Cin, int64_t Cout) {
  constexpr int64_t kBlockBytes = 512 * 1024;
  const int64_t tiles = kBlockBytes / (kPoints * (Cin + Cout) * int64_t(sizeof(T)));
  return std::clamp<int64_t>(tiles / 12 * 12, 12, 96);
}

}  // namespace

template <typename T>
void winograd_filter_transform(const T* weight, int64_t Cout, int64_t Cin, bool adjoint, T* U) {
  // As a convolution from conv_in to conv_out channels: forward Cin -> Cout with tap (i, o, a, b) =
  // weight[o][i][a][b]; adjoint (the data gradient) Cout -> Cin with the flipped filter,
  // tap (o, i, a, b) = weight[o][i][2 - a][2 - b]. U[p][ci][co] = (G tap(ci, co) G^T)[p].
  const int64_t conv_in = adjoint ? Cout : Cin, conv_out = adjoint ? Cin : Cout;
  const int64_t co_stride = adjoint ? 9 : Cin * 9, ci_stride = adjoint ? Cin * 9 : 9;
  at::parallel_for(0, conv_in, grain_for(conv_out * kPoints), [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(9 * conv_out + 18 * conv_out);
    for (int64_t ci = begin; ci < end; ++ci)
      filter_transform_channel(weight + ci * ci_stride, co_stride, adjoint, conv_out, buffer.data(), U + ci * conv_out,
                               conv_in * conv_out);
  });
}

template <typename T>
void winograd_conv3x3_nhwc(const T* x, const T* in_scale, const T* U, const T* out_scale, T* y, int64_t N, int64_t H,
                           int64_t W, int64_t Cin, int64_t Cout) {
  const TileGrid grid = TileGrid::of(N, H, W);
  const int64_t block = tiles_per_block<T>(Cin, Cout), blocks = (grid.count() + block - 1) / block;
  const GemmFunction<T> gemm = gemm_for_this_cpu<T>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // Per-thread buffers that persist across calls: a fresh ~1 MiB allocation per call would be a
    // new mapping whose page faults cost as much as a small layer's convolution.
    thread_local std::vector<T> workspace;
    const size_t needed = size_t(kPoints * block * (Cin + Cout) + kScratch);
    if (workspace.size() < needed) workspace.resize(needed);
    T* V = workspace.data();
    T* M = V + kPoints * block * Cin;
    T* scratch = M + kPoints * block * Cout;
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t first = blk * block, count = std::min(block, grid.count() - first);
      // The GEMM's rows padded with zeros to its 12-row register tiles (block is a multiple of 12).
      const int64_t rows = (count + 11) / 12 * 12;
      transform_input_block(x, in_scale, grid, Cin, first, count, rows, V, scratch);
      for (int p = 0; p < kPoints; ++p) std::fill(V + (p * rows + count) * Cin, V + (p + 1) * rows * Cin, T(0));
      for (int p = 0; p < kPoints; ++p) gemm(V + p * rows * Cin, U + p * Cin * Cout, M + p * rows * Cout, rows, Cout, Cin);
      transform_output_block(M, out_scale, grid, Cout, first, count, rows, y, scratch);
    }
  });
}

int64_t winograd_tiles(int64_t N, int64_t H, int64_t W) { return TileGrid::of(N, H, W).count(); }

namespace {
// fn(first, count, scratch) over the tiles in blocks of 16, in parallel: the whole-layer transform passes.
template <typename T, typename Fn>
void for_each_tile_block(int64_t tiles, const Fn& fn) {
  constexpr int64_t kBlock = 16;
  at::parallel_for(0, (tiles + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(kScratch);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t first = blk * kBlock;
      fn(first, std::min(kBlock, tiles - first), scratch.data());
    }
  });
}
}  // namespace

template <typename T>
void winograd_input_transform_nhwc(const T* x, const T* in_scale, T* V, int64_t N, int64_t H, int64_t W, int64_t C) {
  const TileGrid grid = TileGrid::of(N, H, W);
  for_each_tile_block<T>(grid.count(), [&](int64_t first, int64_t count, T* scratch) {
    transform_input_block(x, in_scale, grid, C, first, count, grid.count(), V + first * C, scratch);
  });
}

template <typename T>
void winograd_output_transform_nhwc(const T* M, const T* out_scale, T* y, int64_t N, int64_t H, int64_t W, int64_t K) {
  const TileGrid grid = TileGrid::of(N, H, W);
  for_each_tile_block<T>(grid.count(), [&](int64_t first, int64_t count, T* scratch) {
    transform_output_block(M + first * K, out_scale, grid, K, first, count, grid.count(), y, scratch);
  });
}

#define INSTANTIATE(T)                                                                                        \
  template void winograd_filter_transform<T>(const T*, int64_t, int64_t, bool, T*);                           \
  template void winograd_conv3x3_nhwc<T>(const T*, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                         int64_t, int64_t);                                                   \
  template void winograd_input_transform_nhwc<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);   \
  template void winograd_output_transform_nhwc<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace pulse_ext::cpu
