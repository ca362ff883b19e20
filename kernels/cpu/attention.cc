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

// q . k over d elements: 8 lanes over d rounded down to 8, reduced as
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then the tail in order.
inline float Dot(const float* q, const float* k, int d) {
  int i = 0;
  float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= d; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), acc);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  sum = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55)));
#else
  float l[8] = {};
  for (; i + 8 <= d; i += 8) {
    for (int j = 0; j < 8; ++j) l[j] = MulAdd(q[i + j], k[i + j], l[j]);
  }
  sum = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
#endif
  for (; i < d; ++i) sum = MulAdd(q[i], k[i], sum);
  return sum;
}

// out[d] += p * v[d] (each element its own sequential sum).
inline void Axpy(float p, const float* v, int d, float* out) {
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 pv = _mm256_set1_ps(p);
  for (; i + 8 <= d; i += 8) {
    _mm256_storeu_ps(out + i,
                     _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
  }
#endif
  for (; i < d; ++i) out[i] = MulAdd(p, v[i], out[i]);
}

// Physical slot of logical slot `logical` of the sequence whose block table row is `table`.
inline int64_t PhysicalSlot(const int32_t* table, int block_size, int64_t logical) {
  return static_cast<int64_t>(table[logical / block_size]) * block_size + logical % block_size;
}

// The physical slots visible to token t, in increasing logical order: [0, prefix), then
// the tree slots tree_start + j (bit j of the mask) beyond the prefix.
void VisibleSlots(const AttentionArgs& a, int t, std::vector<int64_t>* slots) {
  const int seq = a.token_seq[t];
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;
  const int64_t prefix = a.visible_prefix[t];
  slots->clear();
  for (int64_t i = 0; i < prefix; ++i) slots->push_back(PhysicalSlot(table, a.block_size, i));
  if (a.tree_mask == nullptr) return;
  const uint64_t mask = a.tree_mask[t];
  for (int j = 0; j < 64; ++j) {
    const int64_t logical = static_cast<int64_t>(a.tree_start[seq]) + j;
    if (((mask >> j) & 1u) != 0 && logical >= prefix) {
      slots->push_back(PhysicalSlot(table, a.block_size, logical));
    }
  }
}

// out[t, h, :] for pair = t * n_heads + h over the given visible slots. scores: scratch.
void AttendOne(const AttentionArgs& a, int64_t pair, const std::vector<int64_t>& slots,
               std::vector<float>* scores) {
  const int d = a.head_dim;
  const int64_t kv_row = static_cast<int64_t>(a.n_kv_heads) * d;
  const int64_t kv_offset = static_cast<int64_t>(pair % a.n_heads / (a.n_heads / a.n_kv_heads)) * d;
  const float* q = a.q + pair * d;
  float* out = a.out + pair * d;
  std::fill(out, out + d, 0.0f);
  if (slots.empty()) return;
  scores->resize(slots.size());
  float* s = scores->data();
  // s_i = scale * q . k_i;  m = max_i s_i
  float max_score = -INFINITY;
  for (size_t i = 0; i < slots.size(); ++i) {
    s[i] = a.scale * Dot(q, a.k_cache + slots[i] * kv_row + kv_offset, d);
    max_score = std::max(max_score, s[i]);
  }
  // p_i = exp(s_i - m);  l = sum_i p_i
  float denom = 0.0f;
  for (size_t i = 0; i < slots.size(); ++i) {
    s[i] = std::exp(s[i] - max_score);
    denom += s[i];
  }
  // out = (sum_i p_i v_i) / l
  for (size_t i = 0; i < slots.size(); ++i) {
    Axpy(s[i], a.v_cache + slots[i] * kv_row + kv_offset, d, out);
  }
  for (int i = 0; i < d; ++i) out[i] /= denom;
}

}  // namespace

void PagedAttention(const AttentionArgs& a, ThreadPool& pool) {
  if (a.n_tokens <= 0 || a.n_heads <= 0) return;
  const int64_t pairs = static_cast<int64_t>(a.n_tokens) * a.n_heads;
  // Pairs are dealt round-robin to one interleaved lane per thread, so causal prefill
  // (later tokens see more keys) is balanced across threads.
  const int64_t lanes = std::min<int64_t>(pool.num_threads(), pairs);
  pool.ParallelFor(lanes, [&](int64_t lane_begin, int64_t lane_end) {
    std::vector<int64_t> slots;
    std::vector<float> scores;
    for (int64_t lane = lane_begin; lane < lane_end; ++lane) {
      int slots_token = -1;
      for (int64_t pair = lane; pair < pairs; pair += lanes) {
        const int t = static_cast<int>(pair / a.n_heads);
        if (t != slots_token) {
          VisibleSlots(a, t, &slots);
          slots_token = t;
        }
        AttendOne(a, pair, slots, &scores);
      }
    }
  });
}

}  // namespace specmoe::kernels
