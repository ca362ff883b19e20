// kernels/cpu/matmul.cc — see matmul.h for the contract and the summation order.
//
// Layout of one call: x is first packed by row group, xp[g][k][m_g] (the m_g <= MR rows of
// group g interleaved, so a micro-kernel's broadcasts read one contiguous stream instead of
// MR rows a large power of two apart that would share L1 sets). The work items are
// (panel, chunk of row groups) pairs, split over the pool; an item walks the input in
// K-blocks (all of K at once when there is one row group: the M <= MR case keeps its
// accumulators in registers and streams the panel once), and for each K-block runs the
// micro-kernel over every row group of its chunk while the panel's K-block stays in L1/L2.
// Between K-blocks the accumulators are parked in y exactly (a store and a load of an fp32
// value change nothing), so the order stays the one of matmul.h.
//
// Micro-kernels: AVX-512 holds MR <= 12 rows x 32 outputs (2 zmm per row, 24 accumulators);
// per k it loads (f16/bf16: widens) the panel's 32 weights into 2 zmm and, for each row,
// broadcasts x[r, k] and issues 2 FMAs. AVX2 holds MR <= 6 rows x 16 outputs (one half of a
// panel per call, 12 ymm accumulators). The scalar path is the fmaf loop itself. The
// AVX-512 and AVX2 code carries target attributes, so one binary picks at run time. The
// whole library builds with -ffp-contract=off; every multiply-add here is an explicit FMA.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/f16.h"
#include "kernels/cpu/row_ops.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define SPECMOE_CPU_X86 1
#else
#define SPECMOE_CPU_X86 0
#endif

namespace specmoe::kernels {
namespace {

constexpr int64_t kKBlock = 256;  // K-block when several row groups share a panel
constexpr int kMr512 = 12;        // rows per AVX-512 micro-kernel
constexpr int kMr256 = 6;         // rows per AVX2 micro-kernel
// Per work item, at least this many multiply-adds, so that tiny products stay on one thread.
constexpr int64_t kMinItemWork = int64_t{1} << 16;

std::atomic<MatMulIsa> g_forced_isa{MatMulIsa::kAuto};

bool CpuHasAvx512() {
#if SPECMOE_CPU_X86
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

bool CpuHasAvx2() {
#if SPECMOE_CPU_X86
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

// Scalar element loads (the scalar path, packing checks and row conversion tails).
inline float LoadScalar(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, static_cast<const char*>(base) + i * 4, 4);
      return f;
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const char*>(base) + i * 2, 2);
      return F16ToF32(h);
    }
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const char*>(base) + i * 2, 2);
      return Bf16ToF32(h);
    }
  }
  return 0.0f;
}

// One tile of work for a micro-kernel: rows of group xg (layout [k][mr]) against one panel,
// inputs [k0, k0 + kc), outputs y[r * ldy + j] for j < valid (<= kPanelWidth).
struct Tile {
  const float* xg;    // group's packed x at k0: xg[k * mr + r]
  const char* panel;  // the panel's row k0: panel + k * kPanelWidth * elem
  int64_t kc;
  bool first;         // k0 == 0: the accumulators start at +0.0
  bool prefetch;      // prefetch the panel ahead (the first row group to read this K-block)
  float* y;           // output (row 0 of the group, column 0 of the panel)
  int64_t ldy;
  int valid;
};

// ---------------------------------------------------------------------------------------
// Scalar path: the documented order, written out.

void ScalarTile(const Tile& t, int mr, DType dtype) {
  for (int r = 0; r < mr; ++r) {
    for (int j = 0; j < t.valid; ++j) {
      float acc = t.first ? 0.0f : t.y[r * t.ldy + j];
      for (int64_t k = 0; k < t.kc; ++k) {
        acc = std::fma(LoadScalar(t.panel, dtype, k * kPanelWidth + j), t.xg[k * mr + r], acc);
      }
      t.y[r * t.ldy + j] = acc;
    }
  }
}

#if SPECMOE_CPU_X86
// ---------------------------------------------------------------------------------------
// AVX-512: MR rows x 32 outputs.

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized inside their own intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define SPECMOE_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define SPECMOE_AVX2 __attribute__((target("avx2,fma,f16c")))

struct F32Panel {
  static constexpr int kBytes = 4;
  SPECMOE_AVX512 static void Load512(const char* p, __m512* w0, __m512* w1) {
    *w0 = _mm512_loadu_ps(p);
    *w1 = _mm512_loadu_ps(p + 64);
  }
  SPECMOE_AVX2 static void Load256(const char* p, __m256* w0, __m256* w1) {
    *w0 = _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    *w1 = _mm256_loadu_ps(reinterpret_cast<const float*>(p + 32));
  }
};
struct F16Panel {
  static constexpr int kBytes = 2;
  SPECMOE_AVX512 static void Load512(const char* p, __m512* w0, __m512* w1) {
    *w0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    *w1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
  }
  SPECMOE_AVX2 static void Load256(const char* p, __m256* w0, __m256* w1) {
    *w0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    *w1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
  }
};
// bf16 -> f32: zero-extend to 32 bits and shift into the high half (exact).
struct Bf16Panel {
  static constexpr int kBytes = 2;
  SPECMOE_AVX512 static void Load512(const char* p, __m512* w0, __m512* w1) {
    *w0 = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    *w1 = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32))), 16));
  }
  SPECMOE_AVX2 static void Load256(const char* p, __m256* w0, __m256* w1) {
    *w0 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    *w1 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))), 16));
  }
};

// Weight bytes ahead of the current k that each step prefetches (about 16 k-steps of f32).
constexpr int64_t kPrefetchAhead = 2048;

template <class P, int MR>
SPECMOE_AVX512 void Tile512(const Tile& t) {
  constexpr int64_t kRowBytes = kPanelWidth * P::kBytes;  // one k of a panel
  const __mmask16 m0 = t.valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << t.valid) - 1);
  const __mmask16 m1 =
      t.valid >= 32 ? __mmask16(0xFFFF)
                    : (t.valid > 16 ? __mmask16((1u << (t.valid - 16)) - 1) : __mmask16(0));
  __m512 a[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if (t.first) {
      a[r][0] = _mm512_setzero_ps();
      a[r][1] = _mm512_setzero_ps();
    } else {
      a[r][0] = _mm512_maskz_loadu_ps(m0, t.y + r * t.ldy);
      a[r][1] = _mm512_maskz_loadu_ps(m1, t.y + r * t.ldy + 16);
    }
  }
  const char* w = t.panel;
  const float* x = t.xg;
  for (int64_t k = 0; k < t.kc; ++k, w += kRowBytes, x += MR) {
    if (t.prefetch) {
      _mm_prefetch(w + kPrefetchAhead, _MM_HINT_T0);
      if (P::kBytes == 4) _mm_prefetch(w + kPrefetchAhead + 64, _MM_HINT_T0);
    }
    __m512 w0, w1;
    P::Load512(w, &w0, &w1);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 b = _mm512_set1_ps(x[r]);
      a[r][0] = _mm512_fmadd_ps(w0, b, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(w1, b, a[r][1]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(t.y + r * t.ldy, m0, a[r][0]);
    _mm512_mask_storeu_ps(t.y + r * t.ldy + 16, m1, a[r][1]);
  }
}

template <class P>
void Tile512AnyRows(const Tile& t, int mr) {
  switch (mr) {
    case 12: Tile512<P, 12>(t); break;
    case 11: Tile512<P, 11>(t); break;
    case 10: Tile512<P, 10>(t); break;
    case 9: Tile512<P, 9>(t); break;
    case 8: Tile512<P, 8>(t); break;
    case 7: Tile512<P, 7>(t); break;
    case 6: Tile512<P, 6>(t); break;
    case 5: Tile512<P, 5>(t); break;
    case 4: Tile512<P, 4>(t); break;
    case 3: Tile512<P, 3>(t); break;
    case 2: Tile512<P, 2>(t); break;
    default: Tile512<P, 1>(t); break;
  }
}

// ---------------------------------------------------------------------------------------
// AVX2: MR rows x 16 outputs (half h of the panel).

// A lane mask for maskload/maskstore: lanes [0, count) set (count clamped to [0, 8]).
SPECMOE_AVX2 inline __m256i LaneMask(int count) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lanes);
}

template <class P, int MR>
SPECMOE_AVX2 void Half256(const Tile& t, int half) {
  constexpr int64_t kRowBytes = kPanelWidth * P::kBytes;
  const int valid = t.valid - 16 * half;  // > 0
  const __m256i m0 = LaneMask(valid);
  const __m256i m1 = LaneMask(valid - 8);
  float* y = t.y + 16 * half;
  __m256 a[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    if (t.first) {
      a[r][0] = _mm256_setzero_ps();
      a[r][1] = _mm256_setzero_ps();
    } else {
      a[r][0] = _mm256_maskload_ps(y + r * t.ldy, m0);
      a[r][1] = _mm256_maskload_ps(y + r * t.ldy + 8, m1);
    }
  }
  const char* w = t.panel + 16 * half * P::kBytes;
  const float* x = t.xg;
  for (int64_t k = 0; k < t.kc; ++k, w += kRowBytes, x += MR) {
    if (t.prefetch) _mm_prefetch(w + kPrefetchAhead, _MM_HINT_T0);
    __m256 w0, w1;
    P::Load256(w, &w0, &w1);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 b = _mm256_broadcast_ss(x + r);
      a[r][0] = _mm256_fmadd_ps(w0, b, a[r][0]);
      a[r][1] = _mm256_fmadd_ps(w1, b, a[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm256_maskstore_ps(y + r * t.ldy, m0, a[r][0]);
    _mm256_maskstore_ps(y + r * t.ldy + 8, m1, a[r][1]);
  }
}

template <class P, int MR>
void Tile256(const Tile& t) {
  Half256<P, MR>(t, 0);
  if (t.valid > 16) Half256<P, MR>(t, 1);
}

template <class P>
void Tile256AnyRows(const Tile& t, int mr) {
  switch (mr) {
    case 6: Tile256<P, 6>(t); break;
    case 5: Tile256<P, 5>(t); break;
    case 4: Tile256<P, 4>(t); break;
    case 3: Tile256<P, 3>(t); break;
    case 2: Tile256<P, 2>(t); break;
    default: Tile256<P, 1>(t); break;
  }
}
#pragma GCC diagnostic pop
#endif  // SPECMOE_CPU_X86

MatMulIsa ResolveIsa() {
  const MatMulIsa forced = g_forced_isa.load(std::memory_order_relaxed);
  if (forced != MatMulIsa::kAuto) return forced;
  if (CpuHasAvx512()) return MatMulIsa::kAvx512;
  if (CpuHasAvx2()) return MatMulIsa::kAvx2;
  return MatMulIsa::kScalar;
}

using TileFn = void (*)(const Tile&, int mr);

template <DType D>
void ScalarTileAs(const Tile& t, int mr) {
  ScalarTile(t, mr, D);
}

// The tile function of `isa` for `dtype`, and its rows per group.
TileFn PickTile(MatMulIsa isa, DType dtype, int* mr_max) {
#if SPECMOE_CPU_X86
  if (isa == MatMulIsa::kAvx512) {
    *mr_max = kMr512;
    switch (dtype) {
      case DType::kF32: return &Tile512AnyRows<F32Panel>;
      case DType::kF16: return &Tile512AnyRows<F16Panel>;
      case DType::kBF16: return &Tile512AnyRows<Bf16Panel>;
    }
  }
  if (isa == MatMulIsa::kAvx2) {
    *mr_max = kMr256;
    switch (dtype) {
      case DType::kF32: return &Tile256AnyRows<F32Panel>;
      case DType::kF16: return &Tile256AnyRows<F16Panel>;
      case DType::kBF16: return &Tile256AnyRows<Bf16Panel>;
    }
  }
#endif
  *mr_max = kMr512;
  switch (dtype) {
    case DType::kF32: return &ScalarTileAs<DType::kF32>;
    case DType::kF16: return &ScalarTileAs<DType::kF16>;
    case DType::kBF16: return &ScalarTileAs<DType::kBF16>;
  }
  return &ScalarTileAs<DType::kF32>;
}

// Maps a global panel index (matrix after matrix) to its matrix.
struct PanelMap {
  int count = 0;
  int64_t first[kMaxFused + 1] = {};

  PanelMap(const Weight* w, int count_in) : count(count_in) {
    for (int i = 0; i < count; ++i) {
      first[i + 1] = first[i] + (w[i].rows + kPanelWidth - 1) / kPanelWidth;
    }
  }
  int64_t total() const { return first[count]; }
  int Matrix(int64_t panel) const {
    int i = 0;
    while (panel >= first[i + 1]) ++i;
    return i;
  }
};

// The product over panel-packed weights (all of w[i].layout == kPanels), with `fusion`.
void PanelMatMulMany(const float* x, int n, const Weight* w, float* const* y, int count,
                     const MatMulFusion& fusion, ThreadPool& pool) {
  const int64_t in = w[0].cols;
  if (in == 0) {
    // Empty sums: +0.0 everywhere, then the epilogue as below.
    for (int i = 0; i < count; ++i) std::fill(y[i], y[i] + n * w[i].rows, 0.0f);
    const int64_t size = static_cast<int64_t>(n) * w[0].rows;
    for (int64_t i = 0; i < size && fusion.silu_mul; ++i) y[0][i] = SiluMulOne(y[0][i], y[1][i]);
    for (int64_t i = 0; i < size && fusion.residual != nullptr; ++i) {
      fusion.residual[i] = fusion.residual[i] + y[0][i];
    }
    return;
  }
  int mr_max = 1;
  const MatMulIsa isa = ResolveIsa();
  const TileFn tile_fn = PickTile(isa, w[0].dtype, &mr_max);
  for (int i = 1; i < count; ++i) {
    SPECMOE_CHECK(w[i].dtype == w[0].dtype, "fused matrices must have the same dtype");
  }
  // Row groups of near-equal size (n = 16: 8 + 8 rows, not 12 + 4, so no group is a thin
  // tile); group g holds rows [group_row(g), group_row(g + 1)). Which rows share a group
  // changes no output's order.
  const int groups = (n + mr_max - 1) / mr_max;
  const auto group_row = [n, groups](int64_t g) { return static_cast<int>(n * g / groups); };

  // x packed by row group: xp[g * in * mr_max + k * m_g + r] = x[(group_row(g) + r) * in + k].
  thread_local std::vector<float> xpack;
  xpack.resize(static_cast<size_t>(groups) * in * mr_max);
  float* xp = xpack.data();
  pool.ParallelFor(
      groups,
      [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g) {
          const int m = group_row(g + 1) - group_row(g);
          float* dst = xp + g * in * mr_max;
          const float* src = x + group_row(g) * in;
          if (fusion.norm != nullptr) {
            // The RMSNorm of each row, written straight into the packing (and norm_out).
            for (int r = 0; r < m; ++r) {
              const float* xr = src + r * in;
              const float inv_rms = InvRms(xr, static_cast<int>(in), fusion.eps);
              float* out =
                  fusion.norm_out == nullptr ? nullptr : fusion.norm_out + (group_row(g) + r) * in;
              for (int64_t k = 0; k < in; ++k) {
                const float v = NormScale(fusion.norm[k], xr[k], inv_rms);
                dst[k * m + r] = v;
                if (out != nullptr) out[k] = v;
              }
            }
            continue;
          }
          if (m == 1) {
            std::memcpy(dst, src, static_cast<size_t>(in) * sizeof(float));
            continue;
          }
          for (int64_t k = 0; k < in; ++k) {
            for (int r = 0; r < m; ++r) dst[k * m + r] = src[r * in + k];
          }
        }
      },
      std::max<int64_t>(1, (int64_t{1} << 15) / (in * mr_max)));

  const PanelMap map(w, count);
  // Work items: (panel, chunk of row groups); with silu_mul a panel of the gate and the
  // same panel of up form one item.
  const bool pair = fusion.silu_mul;
  SPECMOE_CHECK(!pair || (count == 2 && w[0].rows == w[1].rows), "silu_mul takes gate and up");
  SPECMOE_CHECK(fusion.residual == nullptr || count == 1, "a residual add takes one matrix");
  const int64_t panels = pair ? map.first[1] : map.total();
  const int per_item = pair ? 2 : 1;
  // Row-group chunks: only as many as it takes to give every thread work when there are
  // few panels (a panel's K-block is reused by every row group of its chunk).
  const int threads = pool.num_threads();
  int64_t chunks = 1;
  if (groups > 1 && panels < 2 * threads) {
    chunks = std::min<int64_t>(groups, (2 * threads + panels - 1) / panels);
  }
  // One row group on AVX-512: all of K in registers, the panel streamed once. AVX2 walks a
  // panel in two halves, so it always takes K-blocks (the second half then comes from L1).
  const int64_t kblock = groups == 1 && isa == MatMulIsa::kAvx512 ? in : kKBlock;
  const size_t elem = DTypeBytes(w[0].dtype);
  const int64_t item_work = std::max<int64_t>(1, per_item * kPanelWidth * in * n / chunks);
  // Panel p of matrix m for row groups [g0, g1): the product, in the order of matmul.h.
  const auto run_panel = [&](int m, int64_t p, int64_t g0, int64_t g1) {
    const int64_t rows = w[m].rows;
    const char* panel = static_cast<const char*>(w[m].data) + p * in * kPanelWidth * elem;
    Tile t;
    t.ldy = rows;
    t.valid = static_cast<int>(std::min<int64_t>(kPanelWidth, rows - p * kPanelWidth));
    for (int64_t k0 = 0; k0 < in; k0 += kblock) {
      t.kc = std::min(kblock, in - k0);
      t.first = k0 == 0;
      t.panel = panel + k0 * kPanelWidth * elem;
      for (int64_t g = g0; g < g1; ++g) {
        const int mr = group_row(g + 1) - group_row(g);
        t.xg = xp + g * in * mr_max + k0 * mr;
        t.y = y[m] + group_row(g) * rows + p * kPanelWidth;
        t.prefetch = g == g0;
        tile_fn(t, mr);
      }
    }
  };
  pool.ParallelFor(
      panels * chunks,
      [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t chunk = item / panels;
          const int64_t global = item % panels;
          const int64_t g0 = groups * chunk / chunks;
          const int64_t g1 = groups * (chunk + 1) / chunks;
          const int m = pair ? 0 : map.Matrix(global);
          const int64_t p = global - map.first[m];
          run_panel(m, p, g0, g1);
          if (pair) run_panel(1, p, g0, g1);
          if (!pair && fusion.residual == nullptr) continue;
          // The epilogue over this item's outputs, still in L1.
          const int64_t rows = w[m].rows;
          const int64_t c0 = p * kPanelWidth;
          const int64_t c1 = std::min<int64_t>(rows, c0 + kPanelWidth);
          for (int64_t r = group_row(g0); r < group_row(g1); ++r) {
            float* out = y[0] + r * rows;
            if (pair) {
              const float* up = y[1] + r * rows;
              for (int64_t c = c0; c < c1; ++c) out[c] = SiluMulOne(out[c], up[c]);
            } else {
              float* res = fusion.residual + r * rows;
              for (int64_t c = c0; c < c1; ++c) res[c] = res[c] + out[c];
            }
          }
        }
      },
      std::max<int64_t>(1, kMinItemWork / item_work));
}

}  // namespace

size_t PanelBytes(DType dtype, int64_t rows, int64_t cols) {
  const int64_t panels = (rows + kPanelWidth - 1) / kPanelWidth;
  return static_cast<size_t>(panels * cols * kPanelWidth) * DTypeBytes(dtype);
}

namespace {

// Panel p of w: a transpose of its kPanelWidth rows in tiles of kTile inputs (the tile's
// writes stay in L1). T: a type of the element's size (the bits are copied, not converted).
template <class T>
void PackPanel(const T* src, int64_t rows, int64_t in, int64_t p, T* dst) {
  constexpr int64_t kTile = 64;
  const int valid = static_cast<int>(std::min<int64_t>(kPanelWidth, rows - p * kPanelWidth));
  for (int64_t k0 = 0; k0 < in; k0 += kTile) {
    const int64_t k1 = std::min(k0 + kTile, in);
    for (int j = 0; j < kPanelWidth; ++j) {
      T* out = dst + j;
      if (j >= valid) {
        for (int64_t k = k0; k < k1; ++k) out[k * kPanelWidth] = T{0};
        continue;
      }
      const T* row = src + (p * kPanelWidth + j) * in;
      // memcpy of a constant size: a plain load and store, without type punning.
      for (int64_t k = k0; k < k1; ++k) std::memcpy(out + k * kPanelWidth, row + k, sizeof(T));
    }
  }
}

}  // namespace

Weight PackPanels(const Weight& w, void* out, ThreadPool& pool) {
  SPECMOE_CHECK(w.layout == WeightLayout::kRows, "PackPanels takes a row-major weight");
  SPECMOE_CHECK(reinterpret_cast<uintptr_t>(out) % 64 == 0, "panels must be 64-byte aligned");
  const int64_t in = w.cols;
  const int64_t panels = (w.rows + kPanelWidth - 1) / kPanelWidth;
  // w.data may be unaligned: copy it as bytes into an aligned bounce row when it is.
  const bool wide = w.dtype == DType::kF32;
  const size_t elem = DTypeBytes(w.dtype);
  const bool aligned = reinterpret_cast<uintptr_t>(w.data) % elem == 0;
  pool.ParallelFor(
      panels,
      [&](int64_t begin, int64_t end) {
        std::vector<uint8_t> bounce;
        for (int64_t p = begin; p < end; ++p) {
          const void* src = w.data;
          int64_t first_row = 0;
          if (!aligned) {
            // Only this panel's rows, moved to an aligned buffer (then addressed from row 0).
            const int64_t rows = std::min<int64_t>(kPanelWidth, w.rows - p * kPanelWidth);
            bounce.resize(static_cast<size_t>(kPanelWidth * in) * elem + 8);
            std::memcpy(bounce.data(),
                        static_cast<const uint8_t*>(w.data) + p * kPanelWidth * in * elem,
                        static_cast<size_t>(rows * in) * elem);
            src = bounce.data();
            first_row = p * kPanelWidth;
          }
          const int64_t rows = w.rows - first_row;
          const int64_t q = p - first_row / kPanelWidth;
          char* dst = static_cast<char*>(out) + p * in * kPanelWidth * elem;
          if (wide) {
            PackPanel(static_cast<const uint32_t*>(src), rows, in, q,
                      reinterpret_cast<uint32_t*>(dst));
          } else {
            PackPanel(static_cast<const uint16_t*>(src), rows, in, q,
                      reinterpret_cast<uint16_t*>(dst));
          }
        }
      },
      1);
  Weight packed = w;
  packed.data = out;
  packed.layout = WeightLayout::kPanels;
  return packed;
}

void CpuMatMul(const float* x, int n, const Weight& w, float* y, ThreadPool& pool) {
  CpuMatMulMany(x, n, &w, &y, 1, pool);
}

void CpuMatMulMany(const float* x, int n, const Weight* w, float* const* y, int count,
                   ThreadPool& pool) {
  CpuMatMulFused(x, n, w, y, count, MatMulFusion{}, pool);
}

void CpuMatMulFused(const float* x, int n, const Weight* w, float* const* y, int count,
                    const MatMulFusion& fusion, ThreadPool& pool) {
  if (n <= 0 || count <= 0) return;
  SPECMOE_CHECK(count <= kMaxFused, "too many fused matrices");
  for (int i = 1; i < count; ++i) {
    SPECMOE_CHECK(w[i].cols == w[0].cols, "fused matrices must have the same input size");
  }
  bool all_panels = true;
  for (int i = 0; i < count; ++i) all_panels = all_panels && w[i].layout == WeightLayout::kPanels;
  if (all_panels) {
    PanelMatMulMany(x, n, w, y, count, fusion, pool);
    return;
  }
  // Row-major weights: repack into scratch first (the same bits as a prepared weight).
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> owned[kMaxFused];
  Weight packed[kMaxFused];
  for (int i = 0; i < count; ++i) {
    if (w[i].layout == WeightLayout::kPanels) {
      packed[i] = w[i];
      continue;
    }
    const size_t bytes = std::max<size_t>(64, PanelBytes(w[i].dtype, w[i].rows, w[i].cols));
    owned[i].reset(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    SPECMOE_CHECK(owned[i] != nullptr, "out of memory repacking a weight");
    packed[i] = PackPanels(w[i], owned[i].get(), pool);
  }
  PanelMatMulMany(x, n, packed, y, count, fusion, pool);
}

bool MatMulIsaSupported(MatMulIsa isa) {
  switch (isa) {
    case MatMulIsa::kAuto:
    case MatMulIsa::kScalar:
      return true;
    case MatMulIsa::kAvx2:
      return CpuHasAvx2();
    case MatMulIsa::kAvx512:
      return CpuHasAvx512();
  }
  return false;
}

MatMulIsa ActiveMatMulIsa() { return ResolveIsa(); }

void SetMatMulIsaForTesting(MatMulIsa isa) {
  SPECMOE_CHECK(MatMulIsaSupported(isa), "this CPU cannot run the requested matmul path");
  g_forced_isa.store(isa, std::memory_order_relaxed);
}

const char* MatMulIsaName(MatMulIsa isa) {
  switch (isa) {
    case MatMulIsa::kAuto: return "auto";
    case MatMulIsa::kScalar: return "scalar";
    case MatMulIsa::kAvx2: return "avx2";
    case MatMulIsa::kAvx512: return "avx512";
  }
  return "?";
}

void ConvertRowsToF32(const Weight& w, int64_t row_begin, int64_t row_end, float* out) {
  SPECMOE_CHECK(w.layout == WeightLayout::kRows, "row conversion needs a row-major weight");
  const int64_t count = (row_end - row_begin) * w.cols;
  const int64_t first = row_begin * w.cols;
  if (w.dtype == DType::kF32) {
    std::memcpy(out, static_cast<const float*>(w.data) + first, count * sizeof(float));
    return;
  }
  for (int64_t i = 0; i < count; ++i) out[i] = LoadScalar(w.data, w.dtype, first + i);
}

}  // namespace specmoe::kernels
