// kernels/cpu/attention.cc — see attention.h for the algorithm and its fixed order.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/f16.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace specmoe::kernels {
namespace {

// A cached K or V element widened to f32 (f16 -> f32 is exact).
inline float Widen(float x) { return x; }
inline float Widen(uint16_t h) { return F16ToF32(h); }

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
#if defined(__F16C__)
inline __m256 Load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#else
inline __m256 Load8(const uint16_t* p) {
  alignas(32) float f[8];
  for (int j = 0; j < 8; ++j) f[j] = F16ToF32(p[j]);
  return _mm256_load_ps(f);
}
#endif
#endif

// q . k over d elements: 8 lanes over d rounded down to 8, reduced as
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then the tail in order. K is f32 or f16 (widened).
template <typename KV>
inline float Dot(const float* q, const KV* k, int d) {
  int i = 0;
  float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), Load8(k + i), acc);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  sum = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55)));
#else
  float l[8] = {};
  for (; i + 8 <= d; i += 8) {
    for (int j = 0; j < 8; ++j) l[j] = MulAdd(q[i + j], Widen(k[i + j]), l[j]);
  }
  sum = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
#endif
  for (; i < d; ++i) sum = MulAdd(q[i], Widen(k[i]), sum);
  return sum;
}

// out[d] += p * v[d] (each element its own sequential sum); V is f32 or f16 (widened).
template <typename KV>
inline void Axpy(float p, const KV* v, int d, float* out) {
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 pv = _mm256_set1_ps(p);
  for (; i + 8 <= d; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pv, Load8(v + i), _mm256_loadu_ps(out + i)));
  }
#endif
  for (; i < d; ++i) out[i] = MulAdd(p, Widen(v[i]), out[i]);
}

// Physical slot of logical slot `logical` of the sequence whose block table row is `table`.
inline int64_t PhysicalSlot(const int32_t* table, int block_size, int64_t logical) {
  return static_cast<int64_t>(table[logical / block_size]) * block_size + logical % block_size;
}

// The physical slots visible to token t, in increasing logical order: [0, prefix), then
// the tree slots tree_start + j (bit j of the mask) beyond the prefix.
void VisibleSlots(const AttentionArgs& a, int t, std::vector<int64_t>* slots) {
  const ForwardDesc& f = *a.fwd;
  const int seq = f.token_seq[t];
  const int32_t* table = f.block_tables + static_cast<int64_t>(seq) * f.max_blocks_per_seq;
  const int64_t prefix = f.visible_prefix[t];
  slots->clear();
  for (int64_t i = 0; i < prefix; ++i) slots->push_back(PhysicalSlot(table, a.block_size, i));
  if (f.tree_mask == nullptr) return;
  const uint64_t mask = f.tree_mask[t];
  for (int j = 0; j < 64; ++j) {
    const int64_t logical = static_cast<int64_t>(f.tree_start[seq]) + j;
    if (((mask >> j) & 1u) != 0 && logical >= prefix) {
      slots->push_back(PhysicalSlot(table, a.block_size, logical));
    }
  }
}

// out[t, h, :] for the heads h in [h0, h1) of token t over the given visible slots.
// The cache is walked slot by slot and, within a slot, head by head, so each slot's row of
// K (then V) is read contiguously (one head's d floats sit kv_row floats apart; walking
// head by head would touch a new page per key). Every (t, h) keeps its own order: dots in
// increasing slot order, then the exps and their sum, then sum_i p_i v_i in slot order.
// scores: scratch [h1 - h0, slots].
template <typename KV>
void AttendHeads(const AttentionArgs& a, int t, int h0, int h1, const std::vector<int64_t>& slots,
                 std::vector<float>* scores) {
  const KV* k_cache = static_cast<const KV*>(a.k_cache);
  const KV* v_cache = static_cast<const KV*>(a.v_cache);
  const int d = a.head_dim;
  const int group = a.n_heads / a.n_kv_heads;
  const int64_t kv_row = static_cast<int64_t>(a.n_kv_heads) * d;
  const int64_t count = static_cast<int64_t>(slots.size());
  const int64_t first = static_cast<int64_t>(t) * a.n_heads;
  for (int h = h0; h < h1; ++h) std::fill(a.out + (first + h) * d, a.out + (first + h + 1) * d, 0.0f);
  if (count == 0) return;
  scores->resize(static_cast<size_t>((h1 - h0) * count));
  float* s = scores->data();
  // s[h, i] = scale * q_h . k_i
  for (int64_t i = 0; i < count; ++i) {
    const KV* k_row = k_cache + slots[i] * kv_row;
    for (int h = h0; h < h1; ++h) {
      s[(h - h0) * count + i] = a.scale * Dot(a.q + (first + h) * d, k_row + (h / group) * d, d);
    }
  }
  // p[h, i] = exp(s[h, i] - m_h);  l_h = sum_i p[h, i]
  std::vector<float> denom(h1 - h0);
  for (int h = h0; h < h1; ++h) {
    float* sh = s + (h - h0) * count;
    float max_score = -INFINITY;
    for (int64_t i = 0; i < count; ++i) max_score = std::max(max_score, sh[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < count; ++i) {
      sh[i] = std::exp(sh[i] - max_score);
      sum += sh[i];
    }
    denom[h - h0] = sum;
  }
  // out_h = (sum_i p[h, i] v_i) / l_h
  for (int64_t i = 0; i < count; ++i) {
    const KV* v_row = v_cache + slots[i] * kv_row;
    for (int h = h0; h < h1; ++h) {
      Axpy(s[(h - h0) * count + i], v_row + (h / group) * d, d, a.out + (first + h) * d);
    }
  }
  for (int h = h0; h < h1; ++h) {
    float* out = a.out + (first + h) * d;
    for (int i = 0; i < d; ++i) out[i] /= denom[h - h0];
  }
}

}  // namespace

void PagedAttention(const AttentionArgs& a, ThreadPool& pool) {
  const int n_tokens = a.fwd->n_tokens;
  if (n_tokens <= 0 || a.n_heads <= 0) return;
  // Units of work: (token, range of heads). A few tokens (decode) split their heads over the
  // threads; many tokens take all heads each. Units are dealt round-robin to one interleaved
  // lane per thread, so causal prefill (later tokens see more keys) is balanced.
  const int threads = pool.num_threads();
  const int head_ranges =
      std::clamp(threads / std::max(1, n_tokens) + (threads % std::max(1, n_tokens) != 0), 1,
                 a.n_heads);
  const int64_t units = static_cast<int64_t>(n_tokens) * head_ranges;
  const int64_t lanes = std::min<int64_t>(threads, units);
  pool.ParallelFor(lanes, [&](int64_t lane_begin, int64_t lane_end) {
    std::vector<int64_t> slots;
    std::vector<float> scores;
    for (int64_t lane = lane_begin; lane < lane_end; ++lane) {
      int slots_token = -1;
      for (int64_t unit = lane; unit < units; unit += lanes) {
        const int t = static_cast<int>(unit / head_ranges);
        const int range = static_cast<int>(unit % head_ranges);
        if (t != slots_token) {
          VisibleSlots(a, t, &slots);
          slots_token = t;
        }
        const int h0 = a.n_heads * range / head_ranges;
        const int h1 = a.n_heads * (range + 1) / head_ranges;
        if (a.kv_dtype == DType::kF16) {
          AttendHeads<uint16_t>(a, t, h0, h1, slots, &scores);
        } else {
          AttendHeads<float>(a, t, h0, h1, slots, &scores);
        }
      }
    }
  });
}

}  // namespace specmoe::kernels
