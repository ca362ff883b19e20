// kernels/cpu/matmul.cc — see matmul.h for the contract and the summation order.
//
// Streaming kernel layout: the output rows are split into blocks of kRowBlock rows; a
// thread owns a contiguous range of blocks. For one block, the input dimension is walked
// in tiles of kTileK elements: the block's weight tile (kRowBlock x kTileK) is loaded from
// memory once and stays in L1 while every pair of activation rows is multiplied by it
// (kRowBlock x 2 register accumulators, one 8-lane fp32 accumulator per (row, output); the
// last group may have 1 row). Pairs, not triples: 4 x 3 accumulators plus the loaded
// operands need all 16 ymm registers and GCC spills; pairs run 1.5-1.7x faster at 8-64 rows.
// Between tiles the accumulators are parked in a small per-thread buffer
// [n, kRowBlock, 8]; parking does not change any value, so the per-output order is the
// one documented in matmul.h whatever the blocking. Software prefetch fetches the next
// block's rows (hardware prefetchers stop at 4 KiB pages, the size of a demo weight row).
//
// Panel kernel (kPanelMinRows = 16 rows and more): threads own panels of kPanelRows output rows; x is first
// packed by K-block (rows kPanelK floats apart, so they do not share L1 sets); for each
// block of up to kPanelRowBlock rows and each K-block of kPanelK inputs, the panel's weights
// are converted (f16/bf16) or copied (f32) once into a contiguous buffer and a register-
// blocked micro-kernel runs over every (weight group, row group): with AVX-512, 3 pairs of
// weight rows x 8 rows in 24 zmm registers (a zmm holds two outputs' 8 lanes); with AVX2,
// 3 weight rows x 4 rows in 12 ymm. Lane l of output (r, o) still sums w[o, 8i + l] *
// x[r, 8i + l] over i in increasing order, parked between K-blocks, then reduced and the
// tail added exactly as in the streaming kernel: the same bits for every row count. With
// AVX-512 the first K-block's accumulators start at +0.0 in registers (what a zero-filled
// parked buffer gives), the pack converts and interleaves in one pass over the weights, and
// the micro-kernel steps prefetch what the next pack reads (the next K-block, or the next
// panel's first) into L2, so the weight reads from memory overlap the arithmetic; none of
// this changes a value or the order (measured on the demo target, 2 vCPUs: 16-row pass
// ~25% faster, 32-512 rows 5-15%).
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/check.h"
#include "kernels/cpu/f16.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define SPECMOE_CPU_AVX2 1
#else
#define SPECMOE_CPU_AVX2 0
#endif

namespace specmoe::kernels {
namespace {

constexpr int kLanes = 8;
constexpr int kRowBlock = 4;     // output rows per register block
constexpr int64_t kTileK = 512;  // input elements per tile (multiple of kLanes)
constexpr bool kPrefetch = true;  // software prefetch of the next row block (streaming kernel)

// The many-row (panel) path: a thread owns panels of kPanelRows output rows; for a block of
// up to kPanelRowBlock activation rows it walks the input dimension in K-blocks of
// kPanelK elements, converts (or copies) the panel's weights of that K-block to f32 once
// into a contiguous buffer, and runs a kPanelWRows x kPanelXRows register-blocked
// micro-kernel over every (output group, row group) of the panel.
constexpr int kPanelRows = 24;
constexpr int kPanelWRows = 3;
constexpr int kPanelXRows = 4;
constexpr int64_t kPanelK = 256;
constexpr int kPanelRowBlock = 128;
// Row counts from which the panel path is used (below: the streaming kernel).
constexpr int kPanelMinRows = 16;

// Maps a global unit index (units of `unit_rows` output rows, matrix after matrix) to the
// matrix and its first output row.
struct UnitMap {
  int count = 0;
  int64_t first_unit[kMaxFused + 1] = {};

  UnitMap(const Weight* w, int count_in, int unit_rows) : count(count_in) {
    for (int i = 0; i < count; ++i) {
      first_unit[i + 1] = first_unit[i] + (w[i].rows + unit_rows - 1) / unit_rows;
    }
  }
  int64_t total() const { return first_unit[count]; }
  int Matrix(int64_t unit) const {
    int i = 0;
    while (unit >= first_unit[i + 1]) ++i;
    return i;
  }
};

// Scalar element loads (tails and the fallback).
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

#if SPECMOE_CPU_AVX2

// Loads 8 consecutive weights starting at element i as 8 fp32 lanes (unaligned is fine).
struct F32Loader {
  static constexpr int kBytes = 4;
  static __m256 Load(const void* base, int64_t i) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  }
};
struct F16Loader {
  static constexpr int kBytes = 2;
  static __m256 Load(const void* base, int64_t i) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
  }
};
struct Bf16Loader {
  static constexpr int kBytes = 2;
  // bf16 -> f32: zero-extend to 32 bits and shift into the high half.
  static __m256 Load(const void* base, int64_t i) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
};

// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
inline float ReduceLanes(const float* lanes) {
  const __m256 v = _mm256_loadu_ps(lanes);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
  return _mm_cvtss_f32(s1);
}

// acc[j][i][:] += w[o0 + i, k0:k1] * x[j, k0:k1] lane-wise, for RO outputs and RN rows
// (x, w: row strides `in`). acc points at row 0's parked accumulators ([RN][kRowBlock][8]).
template <class Loader, int RO, int RN>
inline void MicroKernel(const float* x, int64_t in, const void* w, int64_t o0, int64_t k0,
                        int64_t k1, float* acc) {
  // The fixed-size loops below must be fully unrolled so a[][] lives in registers.
  __m256 a[RO][RN];
#pragma GCC unroll 8
  for (int i = 0; i < RO; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) a[i][j] = _mm256_loadu_ps(acc + (j * kRowBlock + i) * kLanes);
  }
  for (int64_t k = k0; k < k1; k += kLanes) {
    __m256 xv[RN];
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) {
      xv[j] = _mm256_loadu_ps(x + j * in + k);
      // Keeps x in a register: otherwise GCC folds the load into each FMA and the loop
      // becomes load-bound (RO loads of x per step instead of one).
      asm("" : "+x"(xv[j]));
    }
#pragma GCC unroll 8
    for (int i = 0; i < RO; ++i) {
      // The same columns of the next block's rows (kRowBlock rows further): a weight row
      // of the demo models is one 4 KiB page or less, and hardware prefetchers stop at
      // page boundaries, so without this each block starts with cold misses.
      if (kPrefetch) {
        _mm_prefetch(static_cast<const char*>(w) + ((o0 + i + kRowBlock) * in + k) * Loader::kBytes,
                     _MM_HINT_T0);
      }
      __m256 wv = Loader::Load(w, (o0 + i) * in + k);
      asm("" : "+x"(wv));  // likewise: one load of w per step, reused RN times
#pragma GCC unroll 8
      for (int j = 0; j < RN; ++j) a[i][j] = _mm256_fmadd_ps(wv, xv[j], a[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < RO; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) _mm256_storeu_ps(acc + (j * kRowBlock + i) * kLanes, a[i][j]);
  }
}

// All n rows against the weight tile w[o0 : o0 + RO, k0:k1], 2 rows at a time.
template <class Loader, int RO>
inline void TileAllRows(const float* x, int n, int64_t in, const void* w, int64_t o0, int64_t k0,
                        int64_t k1, float* acc) {
  int r = 0;
  for (; r + 2 <= n; r += 2) {
    MicroKernel<Loader, RO, 2>(x + r * in, in, w, o0, k0, k1, acc + r * kRowBlock * kLanes);
  }
  if (n - r == 1) {
    MicroKernel<Loader, RO, 1>(x + r * in, in, w, o0, k0, k1, acc + r * kRowBlock * kLanes);
  }
}

// Runs the vector part of one block of RO output rows over all n rows, tile by tile.
template <class Loader, int RO>
void VectorBlock(const float* x, int n, int64_t in, const void* w, int64_t o0, float* acc) {
  const int64_t in_vec = in / kLanes * kLanes;
  for (int64_t k0 = 0; k0 < in_vec; k0 += kTileK) {
    const int64_t k1 = std::min(k0 + kTileK, in_vec);
    TileAllRows<Loader, RO>(x, n, in, w, o0, k0, k1, acc);
  }
}

template <class Loader>
void VectorBlockAnyRows(const float* x, int n, int64_t in, const void* w, int64_t o0, int ro,
                        float* acc) {
  switch (ro) {
    case 4:
      VectorBlock<Loader, 4>(x, n, in, w, o0, acc);
      break;
    case 3:
      VectorBlock<Loader, 3>(x, n, in, w, o0, acc);
      break;
    case 2:
      VectorBlock<Loader, 2>(x, n, in, w, o0, acc);
      break;
    default:
      VectorBlock<Loader, 1>(x, n, in, w, o0, acc);
      break;
  }
}


// The many-row micro-kernel: acc[j][i][:] += pw[i, k0:k1] * x[j, k0:k1] lane-wise for RO
// packed f32 weight rows (pw: row stride kc, k counted from the panel start) and RN
// activation rows (x: row stride in). Weights first (RO registers), then one x register at
// a time: 3 x 4 accumulators + 3 + 1 = 16 ymm registers. acc: [RN][kPanelRows][8].
template <int RO, int RN>
inline void PanelKernel(const float* x, int64_t in, const float* pw, int64_t kc, int64_t steps,
                        float* acc) {
  __m256 a[RO][RN];
#pragma GCC unroll 8
  for (int i = 0; i < RO; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) a[i][j] = _mm256_loadu_ps(acc + (j * kPanelRows + i) * kLanes);
  }
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t k = s * kLanes;
    __m256 wv[RO];
#pragma GCC unroll 8
    for (int i = 0; i < RO; ++i) {
      wv[i] = _mm256_loadu_ps(pw + i * kc + k);
      asm("" : "+x"(wv[i]));
    }
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) {
      __m256 xv = _mm256_loadu_ps(x + j * in + k);
      asm("" : "+x"(xv));
#pragma GCC unroll 8
      for (int i = 0; i < RO; ++i) a[i][j] = _mm256_fmadd_ps(wv[i], xv, a[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < RO; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) _mm256_storeu_ps(acc + (j * kPanelRows + i) * kLanes, a[i][j]);
  }
}

template <int RO>
inline void PanelKernelAnyRows(const float* x, int rn, int64_t in, const float* pw, int64_t kc,
                               int64_t steps, float* acc) {
  switch (rn) {
    case 4:
      PanelKernel<RO, 4>(x, in, pw, kc, steps, acc);
      break;
    case 3:
      PanelKernel<RO, 3>(x, in, pw, kc, steps, acc);
      break;
    case 2:
      PanelKernel<RO, 2>(x, in, pw, kc, steps, acc);
      break;
    default:
      PanelKernel<RO, 1>(x, in, pw, kc, steps, acc);
      break;
  }
}

// One K-block of a panel: every row group of the row block against every output group.
// pw: the packed f32 panel [ro, kc] (rows padded to kc); acc: [rows][kPanelRows][8].
[[maybe_unused]] void PanelBlock(const float* x, int rows, int64_t in, const float* pw, int ro, int64_t kc,
                int64_t steps, float* acc) {
  for (int r = 0; r < rows; r += kPanelXRows) {
    const int rn = std::min(kPanelXRows, rows - r);
    const float* xr = x + static_cast<int64_t>(r) * in;
    float* ar = acc + static_cast<int64_t>(r) * kPanelRows * kLanes;
    int i = 0;
    for (; i + kPanelWRows <= ro; i += kPanelWRows) {
      PanelKernelAnyRows<kPanelWRows>(xr, rn, in, pw + i * kc, kc, steps, ar + i * kLanes);
    }
    if (ro - i == 2) {
      PanelKernelAnyRows<2>(xr, rn, in, pw + i * kc, kc, steps, ar + i * kLanes);
    } else if (ro - i == 1) {
      PanelKernelAnyRows<1>(xr, rn, in, pw + i * kc, kc, steps, ar + i * kLanes);
    }
  }
}

#else  // !SPECMOE_CPU_AVX2: the same order with scalar lanes.

inline float ReduceLanes(const float* l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

void ScalarVectorBlock(const float* x, int n, int64_t in, const Weight& w, int64_t o0, int ro,
                       float* acc) {
  const int64_t in_vec = in / kLanes * kLanes;
  for (int r = 0; r < n; ++r) {
    for (int i = 0; i < ro; ++i) {
      float* a = acc + (r * kRowBlock + i) * kLanes;
      for (int64_t k = 0; k < in_vec; k += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const float wk = LoadScalar(w.data, w.dtype, (o0 + i) * in + k + l);
          a[l] = MulAdd(wk, x[r * in + k + l], a[l]);
        }
      }
    }
  }
}

#endif  // SPECMOE_CPU_AVX2

// Computes y[:, o0 : o0 + ro] for all n rows. acc: scratch [n, kRowBlock, 8].
void OutputBlock(const float* x, int n, const Weight& w, int64_t o0, int ro, float* acc, float* y) {
  const int64_t in = w.cols;
  const int64_t in_vec = in / kLanes * kLanes;
  std::fill(acc, acc + static_cast<int64_t>(n) * kRowBlock * kLanes, 0.0f);
#if SPECMOE_CPU_AVX2
  switch (w.dtype) {
    case DType::kF32:
      VectorBlockAnyRows<F32Loader>(x, n, in, w.data, o0, ro, acc);
      break;
    case DType::kF16:
      VectorBlockAnyRows<F16Loader>(x, n, in, w.data, o0, ro, acc);
      break;
    case DType::kBF16:
      VectorBlockAnyRows<Bf16Loader>(x, n, in, w.data, o0, ro, acc);
      break;
  }
#else
  ScalarVectorBlock(x, n, in, w, o0, ro, acc);
#endif
  for (int r = 0; r < n; ++r) {
    for (int i = 0; i < ro; ++i) {
      float sum = ReduceLanes(acc + (r * kRowBlock + i) * kLanes);
      for (int64_t k = in_vec; k < in; ++k) {
        sum = MulAdd(LoadScalar(w.data, w.dtype, (o0 + i) * in + k), x[r * in + k], sum);
      }
      y[static_cast<int64_t>(r) * w.rows + o0 + i] = sum;
    }
  }
}


#if SPECMOE_CPU_AVX2
// Converts w[o, k0 : k0 + count) to f32 into out (count a multiple of kLanes).
void ConvertSegment(const Weight& w, int64_t o, int64_t k0, int64_t count, float* out) {
  const int64_t first = o * w.cols + k0;
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(w.data) + first, count * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < count; i += kLanes) {
        _mm256_storeu_ps(out + i, F16Loader::Load(w.data, first + i));
      }
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < count; i += kLanes) {
        _mm256_storeu_ps(out + i, Bf16Loader::Load(w.data, first + i));
      }
      return;
  }
}


// The AVX-512 functions are compiled for that target whatever the baseline flags (the
// shipped build is x86-64-v3) and chosen at run time when the CPU has AVX-512F/DQ.
#define SPECMOE_AVX512_TARGET __attribute__((target("avx512f,avx512dq")))
// AVX-512 variant of the panel kernel with the SAME per-output order: one zmm register holds
// the 8-lane accumulators of two outputs (a pair of weight rows), so every lane still sums
// w[o, 8s + l] * x[r, 8s + l] over s in increasing order. The panel is packed pair-
// interleaved: pw[(p * steps + s) * 16 + h * 8 + l] = w[o0 + 2p + h, k0 + 8s + l]; an x row's
// 8 floats are broadcast to both halves. 3 pairs x 8 rows: 24 accumulators + 3 + 1 of the
// 32 zmm registers. acc: [rows][kPanelRows][8], so a pair's two outputs are 16 adjacent floats.
// GCC 12's _mm512_broadcast_f32x8 trips -Wmaybe-uninitialized inside its own header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// kFirst: the first K-block of the panel, whose accumulators start at +0.0 in registers
// (the same value a zero-filled parked buffer would give, so the same bits).
// Each step also prefetches up to two lines of `pf` (pf_count of them), so that the reads
// for the next pack are spread over the arithmetic (a burst of prefetches would stall on
// the line-fill buffers).
template <int RP, int RN, bool kFirst>
SPECMOE_AVX512_TARGET inline void PairKernel(const float* x, int64_t in, const float* pw, int64_t steps, float* acc,
                                             const char* const* pf, int64_t pf_count) {
  __m512 a[RP][RN];
#pragma GCC unroll 8
  for (int q = 0; q < RP; ++q) {
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) {
      a[q][j] = kFirst ? _mm512_setzero_ps()
                       : _mm512_loadu_ps(acc + (j * kPanelRows + 2 * q) * kLanes);
    }
  }
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t k = s * kLanes;
    if (2 * s < pf_count) _mm_prefetch(pf[2 * s], _MM_HINT_T1);
    if (2 * s + 1 < pf_count) _mm_prefetch(pf[2 * s + 1], _MM_HINT_T1);
    __m512 wv[RP];
#pragma GCC unroll 8
    for (int q = 0; q < RP; ++q) {
      wv[q] = _mm512_loadu_ps(pw + (q * steps + s) * 16);
      asm("" : "+v"(wv[q]));
    }
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) {
      __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + j * in + k));
      asm("" : "+v"(xv));
#pragma GCC unroll 8
      for (int q = 0; q < RP; ++q) a[q][j] = _mm512_fmadd_ps(wv[q], xv, a[q][j]);
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < RP; ++q) {
#pragma GCC unroll 8
    for (int j = 0; j < RN; ++j) _mm512_storeu_ps(acc + (j * kPanelRows + 2 * q) * kLanes, a[q][j]);
  }
}

#pragma GCC diagnostic pop

template <int RP, bool kFirst>
SPECMOE_AVX512_TARGET inline void PairKernelAnyRows(const float* x, int rn, int64_t in, const float* pw, int64_t steps,
                              float* acc, const char* const* pf, int64_t pf_count) {
  switch (rn) {
    case 8: PairKernel<RP, 8, kFirst>(x, in, pw, steps, acc, pf, pf_count); break;
    case 7: PairKernel<RP, 7, kFirst>(x, in, pw, steps, acc, pf, pf_count); break;
    case 6: PairKernel<RP, 6, kFirst>(x, in, pw, steps, acc, pf, pf_count); break;
    case 5: PairKernel<RP, 5, kFirst>(x, in, pw, steps, acc, pf, pf_count); break;
    case 4: PairKernel<RP, 4, kFirst>(x, in, pw, steps, acc, pf, pf_count); break;
    case 3: PairKernel<RP, 3, kFirst>(x, in, pw, steps, acc, pf, pf_count); break;
    case 2: PairKernel<RP, 2, kFirst>(x, in, pw, steps, acc, pf, pf_count); break;
    default: PairKernel<RP, 1, kFirst>(x, in, pw, steps, acc, pf, pf_count); break;
  }
}

constexpr int kPairXRows = 8;
constexpr int kPairGroup = 3;  // pairs per micro-kernel

// Software prefetch of the weights the next pack will read (the next K-block of the panel,
// or the next panel's first one) into L2, a line or two per micro-kernel step, so that the
// loads from memory overlap the arithmetic instead of stalling the pack (a K-block touches
// kPanelRows different 4 KiB pages, where the hardware prefetchers start cold). Prefetching
// changes no value.
struct WeightPrefetch {
  static constexpr int kMaxLines = kPanelRows * kPanelK * 4 / 64;
  const char* lines[kMaxLines];
  int64_t count = 0;  // lines to prefetch
  int64_t next = 0;   // the first not yet handed to a micro-kernel

  // Lists rows [o0, o0 + rows) x inputs [k0, k0 + kc) of w.
  void Set(const Weight& w, int64_t o0, int rows, int64_t k0, int64_t kc) {
    const int64_t bytes = DTypeBytes(w.dtype);
    const int64_t per_row = (kc * bytes + 63) / 64;
    const char* row = static_cast<const char*>(w.data) + (o0 * w.cols + k0) * bytes;
    for (int i = 0; i < rows; ++i, row += w.cols * bytes) {
      for (int64_t l = 0; l < per_row; ++l) lines[count++] = row + l * 64;
    }
  }
  // The share of one micro-kernel call of `steps` steps (two lines a step at most).
  int64_t Take(int64_t steps, const char* const** first) {
    *first = lines + next;
    const int64_t n = std::min(count - next, 2 * steps);
    next += n;
    return n;
  }
};

// One K-block of a panel of `pairs` packed pairs: every row group against every pair group.
template <bool kFirst>
SPECMOE_AVX512_TARGET void PairBlock(const float* x, int rows, int64_t in, const float* pw, int pairs,
                                     int64_t steps, float* acc, WeightPrefetch& prefetch) {
  const char* const* pf;
  for (int r = 0; r < rows; r += kPairXRows) {
    const int rn = std::min(kPairXRows, rows - r);
    const float* xr = x + static_cast<int64_t>(r) * in;
    float* ar = acc + static_cast<int64_t>(r) * kPanelRows * kLanes;
    int p = 0;
    for (; p + kPairGroup <= pairs; p += kPairGroup) {
      const int64_t pn = prefetch.Take(steps, &pf);
      PairKernelAnyRows<kPairGroup, kFirst>(xr, rn, in, pw + p * steps * 16, steps, ar + 2 * p * kLanes,
                                            pf, pn);
    }
    if (pairs - p == 2) {
      const int64_t pn = prefetch.Take(steps, &pf);
      PairKernelAnyRows<2, kFirst>(xr, rn, in, pw + p * steps * 16, steps, ar + 2 * p * kLanes, pf, pn);
    } else if (pairs - p == 1) {
      const int64_t pn = prefetch.Take(steps, &pf);
      PairKernelAnyRows<1, kFirst>(xr, rn, in, pw + p * steps * 16, steps, ar + 2 * p * kLanes, pf, pn);
    }
  }
}

// Packs w[o0 : o0 + ro, k0 : k0 + kc) pair-interleaved into pw as f32, in one pass over the
// weights (an odd last row is paired with zeros).
template <class Loader>
SPECMOE_AVX512_TARGET void PackPairsAs(const void* w, int64_t in, int64_t o0, int ro, int64_t k0,
                                       int64_t kc, float* pw) {
  const int64_t steps = kc / kLanes;
  for (int i = 0; i < ro + (ro & 1); ++i) {
    float* dst = pw + (i / 2) * steps * 16 + (i & 1) * kLanes;
    if (i < ro) {
      const int64_t first = (o0 + i) * in + k0;
      for (int64_t s = 0; s < steps; ++s) {
        _mm256_storeu_ps(dst + s * 16, Loader::Load(w, first + s * kLanes));
      }
    } else {
      for (int64_t s = 0; s < steps; ++s) _mm256_storeu_ps(dst + s * 16, _mm256_setzero_ps());
    }
  }
}

SPECMOE_AVX512_TARGET void PackPairs(const Weight& w, int64_t o0, int ro, int64_t k0, int64_t kc,
                                     float* pw) {
  switch (w.dtype) {
    case DType::kF32:
      PackPairsAs<F32Loader>(w.data, w.cols, o0, ro, k0, kc, pw);
      return;
    case DType::kF16:
      PackPairsAs<F16Loader>(w.data, w.cols, o0, ro, k0, kc, pw);
      return;
    case DType::kBF16:
      PackPairsAs<Bf16Loader>(w.data, w.cols, o0, ro, k0, kc, pw);
      return;
  }
}

bool CpuHasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return has;
}

// y[r0 : r0 + rows, o0 : o0 + ro] through the panel path. acc: [rows, kPanelRows, 8];
// pw: [kPanelRows, kPanelK].
// xp: x packed by K-block, xp[(kb * n + r) * kPanelK + k] = x[r, kb * kPanelK + k], so the
// rows of a micro-kernel are kPanelK floats apart (rows `in` apart would share L1 sets when
// `in` is a multiple of 1024 and evict each other).
void PanelOutput(const float* x, const float* xp, int n, int r0, int rows, const Weight& w,
                 int64_t o0, int ro, bool prefetch_next_panel, float* acc, float* pw, float* y) {
  const int64_t in = w.cols;
  const int64_t in_vec = in / kLanes * kLanes;
  const float* xr = x + static_cast<int64_t>(r0) * in;
  if (CpuHasAvx512()) {
    for (int64_t k0 = 0; k0 < in_vec; k0 += kPanelK) {
      const int64_t kc = std::min(kPanelK, in_vec - k0);
      const float* xb = xp + ((k0 / kPanelK) * n + r0) * kPanelK;
      // What the next pack reads: this panel's next K-block, else (when asked) the next
      // panel's first one.
      WeightPrefetch prefetch;
      if (k0 + kc < in_vec) {
        prefetch.Set(w, o0, ro, k0 + kc, std::min(kPanelK, in_vec - k0 - kc));
      } else if (prefetch_next_panel) {
        const int next_rows = static_cast<int>(std::min<int64_t>(kPanelRows, w.rows - o0 - ro));
        prefetch.Set(w, o0 + ro, next_rows, 0, std::min(kPanelK, in_vec));
      }
      PackPairs(w, o0, ro, k0, kc, pw);
      if (k0 == 0) {
        PairBlock<true>(xb, rows, kPanelK, pw, (ro + 1) / 2, kc / kLanes, acc, prefetch);
      } else {
        PairBlock<false>(xb, rows, kPanelK, pw, (ro + 1) / 2, kc / kLanes, acc, prefetch);
      }
    }
    if (in_vec == 0) std::fill(acc, acc + static_cast<int64_t>(rows) * kPanelRows * kLanes, 0.0f);
  } else {
    std::fill(acc, acc + static_cast<int64_t>(rows) * kPanelRows * kLanes, 0.0f);
    for (int64_t k0 = 0; k0 < in_vec; k0 += kPanelK) {
      const int64_t kc = std::min(kPanelK, in_vec - k0);
      const float* xb = xp + ((k0 / kPanelK) * n + r0) * kPanelK;
      for (int i = 0; i < ro; ++i) ConvertSegment(w, o0 + i, k0, kc, pw + i * kc);
      PanelBlock(xb, rows, kPanelK, pw, ro, kc, kc / kLanes, acc);
    }
  }
  for (int r = 0; r < rows; ++r) {
    const float* xrow = xr + static_cast<int64_t>(r) * in;
    for (int i = 0; i < ro; ++i) {
      float sum = ReduceLanes(acc + (static_cast<int64_t>(r) * kPanelRows + i) * kLanes);
      for (int64_t k = in_vec; k < in; ++k) {
        sum = MulAdd(LoadScalar(w.data, w.dtype, (o0 + i) * in + k), xrow[k], sum);
      }
      y[static_cast<int64_t>(r0 + r) * w.rows + o0 + i] = sum;
    }
  }
}

void PanelMatMulMany(const float* x, int n, const Weight* ws, float* const* ys, int count,
                    ThreadPool& pool) {
  const UnitMap map(ws, count, kPanelRows);
  const int64_t in = ws[0].cols;
  const int64_t in_vec = in / kLanes * kLanes;
  const int64_t kblocks = (in_vec + kPanelK - 1) / kPanelK;
  thread_local std::vector<float> xpack;
  xpack.resize(static_cast<size_t>(std::max<int64_t>(1, kblocks * n * kPanelK)));
  float* xp = xpack.data();
  pool.ParallelFor(
      n,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          for (int64_t kb = 0; kb < kblocks; ++kb) {
            const int64_t kc = std::min(kPanelK, in_vec - kb * kPanelK);
            std::memcpy(xp + (kb * n + r) * kPanelK, x + r * in + kb * kPanelK,
                        static_cast<size_t>(kc) * sizeof(float));
          }
        }
      },
      64);
  pool.ParallelFor(map.total(), [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> acc, pw;
    const int block = std::min(n, kPanelRowBlock);
    acc.resize(static_cast<size_t>(block) * kPanelRows * kLanes);
    pw.resize(static_cast<size_t>(kPanelRows) * kPanelK);
    for (int64_t p = begin; p < end; ++p) {
      const int m = map.Matrix(p);
      const Weight& w = ws[m];
      float* y = ys[m];
      const int64_t o0 = (p - map.first_unit[m]) * kPanelRows;
      const int ro = static_cast<int>(std::min<int64_t>(kPanelRows, w.rows - o0));
      for (int r0 = 0; r0 < n; r0 += kPanelRowBlock) {
        // After the last row block, prefetch the next panel of this thread's range (the
        // other row blocks revisit this panel, which is still in L2).
        const bool last_block = r0 + kPanelRowBlock >= n;
        PanelOutput(x, xp, n, r0, std::min(kPanelRowBlock, n - r0), w, o0, ro,
                    last_block && p + 1 < end && map.Matrix(p + 1) == m, acc.data(),
                    pw.data(), y);
      }
    }
  });
}
#endif  // SPECMOE_CPU_AVX2

}  // namespace

void CpuMatMul(const float* x, int n, const Weight& w, float* y, ThreadPool& pool) {
  CpuMatMulMany(x, n, &w, &y, 1, pool);
}

void CpuMatMulMany(const float* x, int n, const Weight* w, float* const* y, int count,
                   ThreadPool& pool) {
  if (n <= 0 || count <= 0) return;
  SPECMOE_CHECK(count <= kMaxFused, "too many fused matrices");
  for (int i = 1; i < count; ++i) {
    SPECMOE_CHECK(w[i].cols == w[0].cols, "fused matrices must have the same input size");
  }
#if SPECMOE_CPU_AVX2
  if (n >= kPanelMinRows) {
    PanelMatMulMany(x, n, w, y, count, pool);
    return;
  }
#endif
  StreamingMatMulMany(x, n, w, y, count, pool);
}

void StreamingMatMul(const float* x, int n, const Weight& w, float* y, ThreadPool& pool) {
  StreamingMatMulMany(x, n, &w, &y, 1, pool);
}

void StreamingMatMulMany(const float* x, int n, const Weight* w, float* const* y, int count,
                         ThreadPool& pool) {
  if (n <= 0 || count <= 0) return;
  SPECMOE_CHECK(count <= kMaxFused, "too many fused matrices");
  const UnitMap map(w, count, kRowBlock);
  // Keep at least ~64K multiply-adds per thread so tiny products stay on one thread.
  const int64_t block_work = std::max<int64_t>(1, kRowBlock * w[0].cols * n);
  const int64_t min_blocks = std::max<int64_t>(1, (int64_t{1} << 16) / block_work);
  pool.ParallelFor(
      map.total(),
      [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> acc;
        acc.resize(static_cast<size_t>(n) * kRowBlock * kLanes);
        for (int64_t u = begin; u < end; ++u) {
          const int i = map.Matrix(u);
          const int64_t o0 = (u - map.first_unit[i]) * kRowBlock;
          const int ro = static_cast<int>(std::min<int64_t>(kRowBlock, w[i].rows - o0));
          OutputBlock(x, n, w[i], o0, ro, acc.data(), y[i]);
        }
      },
      min_blocks);
}

void ConvertRowsToF32(const Weight& w, int64_t row_begin, int64_t row_end, float* out) {
  const int64_t count = (row_end - row_begin) * w.cols;
  const int64_t first = row_begin * w.cols;
  int64_t i = 0;
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(w.data) + first, count * sizeof(float));
      return;
    case DType::kF16:
#if SPECMOE_CPU_AVX2
      for (; i + kLanes <= count; i += kLanes) {
        _mm256_storeu_ps(out + i, F16Loader::Load(w.data, first + i));
      }
#endif
      break;
    case DType::kBF16:
#if SPECMOE_CPU_AVX2
      for (; i + kLanes <= count; i += kLanes) {
        _mm256_storeu_ps(out + i, Bf16Loader::Load(w.data, first + i));
      }
#endif
      break;
  }
  for (; i < count; ++i) out[i] = LoadScalar(w.data, w.dtype, first + i);
}


}  // namespace specmoe::kernels
