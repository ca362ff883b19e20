// kernels/cpu/cpu_backend.cc — the CPU implementation of the Backend op table (backend.h).
//
// Matmul: the batch-invariant kernels of matmul.h for every row count (OpenBLAS is only the
// benchmarks' reference); attention in attention.h; the small ops below follow Hugging Face
// transformers' LLaMA code (RMSNorm, rotary embedding) in fp32, op by op. Everything runs
// on one ThreadPool. This backend is the reference other backends are tested against.
// Tested by tests/cpu_backend_test.cc (each op against a double-precision reference, batch
// invariance bit-exactly).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/check.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/f16.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/row_ops.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/routing_order.h"

namespace specmoe::kernels {
namespace {

// Element-wise loops shorter than this stay on the calling thread.
constexpr int64_t kMinParallelElements = int64_t{1} << 15;

inline int64_t MinRows(int64_t row_elements) {
  return std::max<int64_t>(1, kMinParallelElements / std::max<int64_t>(1, row_elements));
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads) : pool_(num_threads) {}

  std::string name() const override { return "cpu"; }

  void* Alloc(size_t bytes) override {
    const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    return std::aligned_alloc(64, rounded);
  }
  void Free(void* ptr) override { std::free(ptr); }
  void CopyFromHost(void* dst, const void* host_src, size_t bytes) override {
    std::memcpy(dst, host_src, bytes);
  }
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override {
    std::memcpy(host_dst, src, bytes);
  }
  void Copy(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  Weight Upload(const Weight& host_weight) override { return host_weight; }

  // Repacks into K-major panels owned by this backend (matmul.h PackPanels); a weight that
  // is already packed is returned as it is.
  Weight PrepareLinear(const Weight& host_weight) override {
    if (host_weight.layout == WeightLayout::kPanels) return host_weight;
    const size_t bytes =
        std::max<size_t>(64, PanelBytes(host_weight.dtype, host_weight.rows, host_weight.cols));
    void* panels = Alloc(bytes);
    if (panels == nullptr) return Weight{};
    owned_.push_back(panels);
    return PackPanels(host_weight, panels, pool_);
  }

  ~CpuBackend() override {
    for (void* p : owned_) Free(p);
  }

  // Host memory is this backend's memory: the description is kept as given.
  const ForwardDesc* BeginForward(const ForwardDesc& host) override {
    fwd_ = host;
    return &fwd_;
  }

  void MatMul(const float* x, int n, const Weight& w, float* y) override {
    CpuMatMul(x, n, w, y, pool_);
  }

  void MatMulMany(const float* x, int n, const Weight* w, float* const* y, int count) override {
    CpuMatMulMany(x, n, w, y, count, pool_);
  }

  void Embedding(const ForwardDesc& fwd, const Weight& w, float* out) override {
    SPECMOE_CHECK(w.layout == WeightLayout::kRows, "an embedding table must be row-major");
    const int32_t* ids = fwd.tokens;
    for (int i = 0; i < fwd.n_tokens; ++i) {
      SPECMOE_CHECK(ids[i] >= 0 && ids[i] < w.rows, "embedding id out of range");
      ConvertRowsToF32(w, ids[i], ids[i] + 1, out + static_cast<int64_t>(i) * w.cols);
    }
  }

  // HF LlamaRMSNorm in fp32: var = mean(x^2); h = x * rsqrt(var + eps); y = w * h.
  void RmsNorm(const float* x, int n, int d, const Weight& w, float eps, float* y) override {
    SPECMOE_CHECK(w.rows * w.cols == d && w.layout == WeightLayout::kRows,
                  "norm weight must be row-major of size d");
    std::vector<float> weight(d);
    ConvertRowsToF32(Weight{w.data, w.dtype, 1, d}, 0, 1, weight.data());
    pool_.ParallelFor(
        n,
        [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const float* xr = x + r * d;
            float* yr = y + r * d;
            const float inv_rms = InvRms(xr, d, eps);
            for (int i = 0; i < d; ++i) yr[i] = NormScale(weight[i], xr[i], inv_rms);
          }
        },
        MinRows(d));
  }

  // HF LlamaRotaryEmbedding + apply_rotary_pos_emb, in fp32 like transformers:
  //   inv_freq_j = 1 / theta^(float(2j) / head_dim) (then the llama3 scaling, if any),
  //   angle = float(pos) * inv_freq_j,
  //   x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin (each product rounded, then the sum).
  void Rope(float* x, const ForwardDesc& fwd, int n_heads, int head_dim, float theta,
            const RopeScaling& scaling) override {
    const int n = fwd.n_tokens;
    const int32_t* pos = fwd.positions;
    const int half = head_dim / 2;
    std::vector<float> inv_freq(half);
    RopeInverseFrequencies(head_dim, theta, scaling, inv_freq.data());
    const int64_t row = static_cast<int64_t>(n_heads) * head_dim;
    pool_.ParallelFor(
        n,
        [&](int64_t begin, int64_t end) {
          std::vector<float> cos_t(half), sin_t(half);
          for (int64_t t = begin; t < end; ++t) {
            RopeAngles(pos[t], inv_freq.data(), half, cos_t.data(), sin_t.data());
            RopeHeads(x + t * row, n_heads, head_dim, cos_t.data(), sin_t.data());
          }
        },
        MinRows(row * 4));
  }

  void SiluMul(const float* gate, const float* up, int n, int d, float* out) override {
    const int64_t count = static_cast<int64_t>(n) * d;
    pool_.ParallelFor(
        count,
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) out[i] = SiluMulOne(gate[i], up[i]);
        },
        kMinParallelElements);
  }

  void Add(const float* x, size_t count, float* y) override {
    pool_.ParallelFor(
        static_cast<int64_t>(count),
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) y[i] += x[i];
        },
        kMinParallelElements);
  }

  void Tanh(float* x, size_t count) override {
    pool_.ParallelFor(
        static_cast<int64_t>(count),
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) x[i] = std::tanh(x[i]);
        },
        kMinParallelElements / 8);
  }

  void KvWrite(const float* k, const float* v, const ForwardDesc& fwd, int row, DType kv_dtype,
               void* k_cache, void* v_cache) override {
    const int n = fwd.n_tokens;
    const int32_t* slots = fwd.slots;
    SPECMOE_CHECK(kv_dtype == DType::kF32 || kv_dtype == DType::kF16,
                  "the CPU KV cache holds f32 or f16");
    for (int i = 0; i < n; ++i) {
      WriteKvRow(k + static_cast<int64_t>(i) * row, v + static_cast<int64_t>(i) * row, slots[i],
                 row, kv_dtype, k_cache, v_cache);
    }
  }

  // Fused forms (backend.h): the same arithmetic as the separate ops (row_ops.h), folded
  // into the MatMul's packing and epilogue (matmul.h MatMulFusion) or into one pass.
  void RmsNormMatMulMany(const float* x, int n, int d, const Weight& norm, float eps, float* xb,
                         const Weight* w, float* const* y, int count) override {
    SPECMOE_CHECK(norm.rows * norm.cols == d && norm.layout == WeightLayout::kRows,
                  "norm weight must be row-major of size d");
    SPECMOE_CHECK(count >= 1 && w[0].cols == d, "the product must take the normalized rows");
    norm_.resize(d);
    ConvertRowsToF32(Weight{norm.data, norm.dtype, 1, d}, 0, 1, norm_.data());
    MatMulFusion fusion;
    fusion.norm = norm_.data();
    fusion.eps = eps;
    fusion.norm_out = xb;
    CpuMatMulFused(x, n, w, y, count, fusion, pool_);
  }

  void MatMulAdd(const float* x, int n, const Weight& w, float* tmp, float* y) override {
    MatMulFusion fusion;
    fusion.residual = y;
    CpuMatMulFused(x, n, &w, &tmp, 1, fusion, pool_);
  }

  void GateUpSiluMul(const float* x, int n, const Weight& gate, const Weight& up, float* gate_out,
                     float* up_out) override {
    const Weight w[2] = {gate, up};
    float* const y[2] = {gate_out, up_out};
    MatMulFusion fusion;
    fusion.silu_mul = true;
    CpuMatMulFused(x, n, w, y, 2, fusion, pool_);
  }

  // Per token: its angles once, q's and k's heads rotated, its K/V rows written.
  void RopeKvWrite(float* q, float* k, const float* v, const ForwardDesc& fwd, int n_heads,
                   int n_kv_heads, int head_dim, float theta, const RopeScaling& scaling,
                   DType kv_dtype, void* k_cache, void* v_cache) override {
    SPECMOE_CHECK(kv_dtype == DType::kF32 || kv_dtype == DType::kF16,
                  "the CPU KV cache holds f32 or f16");
    const int half = head_dim / 2;
    std::vector<float> inv_freq(half);
    RopeInverseFrequencies(head_dim, theta, scaling, inv_freq.data());
    const int64_t q_row = static_cast<int64_t>(n_heads) * head_dim;
    const int kv_row = n_kv_heads * head_dim;
    pool_.ParallelFor(
        fwd.n_tokens,
        [&](int64_t begin, int64_t end) {
          std::vector<float> cos_t(half), sin_t(half);
          for (int64_t t = begin; t < end; ++t) {
            RopeAngles(fwd.positions[t], inv_freq.data(), half, cos_t.data(), sin_t.data());
            RopeHeads(q + t * q_row, n_heads, head_dim, cos_t.data(), sin_t.data());
            float* k_row = k + t * kv_row;
            RopeHeads(k_row, n_kv_heads, head_dim, cos_t.data(), sin_t.data());
            WriteKvRow(k_row, v + t * kv_row, fwd.slots[t], kv_row, kv_dtype, k_cache, v_cache);
          }
        },
        MinRows((q_row + kv_row) * 4));
  }

  // k_cache[slot] = k_row, v_cache[slot] = v_row (f32 copied, f16 rounded to nearest even).
  static void WriteKvRow(const float* k_row, const float* v_row, int64_t slot, int row,
                         DType kv_dtype, void* k_cache, void* v_cache) {
    const int64_t dst = slot * row;
    if (kv_dtype == DType::kF32) {
      std::memcpy(static_cast<float*>(k_cache) + dst, k_row, row * sizeof(float));
      std::memcpy(static_cast<float*>(v_cache) + dst, v_row, row * sizeof(float));
      return;
    }
    uint16_t* k_out = static_cast<uint16_t*>(k_cache) + dst;
    uint16_t* v_out = static_cast<uint16_t*>(v_cache) + dst;
    for (int j = 0; j < row; ++j) {
      k_out[j] = F32ToF16(k_row[j]);
      v_out[j] = F32ToF16(v_row[j]);
    }
  }

  void KvCompact(const int32_t* src, const int32_t* dst, int n, int row, DType kv_dtype,
                 void* const* k_caches, void* const* v_caches, int layers) override {
    const size_t bytes = static_cast<size_t>(row) * DTypeBytes(kv_dtype);
    for (int l = 0; l < layers; ++l) {
      for (void* cache : {k_caches[l], v_caches[l]}) {
        char* base = static_cast<char*>(cache);
        for (int i = 0; i < n; ++i) {
          if (src[i] == dst[i]) continue;
          std::memcpy(base + static_cast<size_t>(dst[i]) * bytes,
                      base + static_cast<size_t>(src[i]) * bytes, bytes);
        }
      }
    }
  }

  void Attention(const AttentionArgs& args) override {
    SPECMOE_CHECK(args.n_kv_heads > 0 && args.n_heads % args.n_kv_heads == 0,
                      "n_heads must be a multiple of n_kv_heads");
    PagedAttention(args, pool_);
  }

  void GatherRows(const float* x, const ForwardDesc& fwd, int cols, float* out) override {
    for (int i = 0; i < fwd.n_logit_rows; ++i) {
      const int row = fwd.logit_rows[i];
      if (out + static_cast<size_t>(i) * cols == x + static_cast<size_t>(row) * cols) continue;
      std::memmove(out + static_cast<size_t>(i) * cols, x + static_cast<size_t>(row) * cols,
                   cols * sizeof(float));
    }
  }

  // Top k of each row (ties: lower index first), then softmax over the k logits:
  // w_j = exp(l_j - l_0) / sum_i exp(l_i - l_0), summed in j order. Then the pairs grouped
  // by expert with a counting sort (stable: increasing pair order within an expert).
  void TopKSoftmax(const float* logits, int n, int e, int k, const MoeRouting& r) override {
    SPECMOE_CHECK(k >= 1 && k <= e, "k must be in [1, e]");
    std::vector<int32_t> order(e);
    std::vector<float> p(k);
    for (int t = 0; t < n; ++t) {
      const float* l = logits + static_cast<int64_t>(t) * e;
      std::iota(order.begin(), order.end(), 0);
      // A strict total order even with NaN (routing_order.h): k distinct experts always.
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [l](int32_t a, int32_t b) {
        return ExpertBefore(l[a], a, l[b], b);
      });
      float sum = 0.0f;
      for (int j = 0; j < k; ++j) {
        p[j] = std::exp(l[order[j]] - l[order[0]]);
        sum += p[j];
      }
      for (int j = 0; j < k; ++j) {
        r.idx[static_cast<int64_t>(t) * k + j] = order[j];
        r.weight[static_cast<int64_t>(t) * k + j] = p[j] / sum;
      }
    }
    const int32_t pairs = n * k;
    std::fill(r.counts, r.counts + e, 0);
    for (int32_t pair = 0; pair < pairs; ++pair) ++r.counts[r.idx[pair]];
    r.offsets[0] = 0;
    for (int x = 0; x < e; ++x) r.offsets[x + 1] = r.offsets[x] + r.counts[x];
    std::vector<int32_t> next(r.offsets, r.offsets + e);
    for (int32_t pair = 0; pair < pairs; ++pair) r.pairs[next[r.idx[pair]]++] = pair;
  }

  // For each expert x, its pairs (token, j) from the routing (increasing order), runs
  // down(silu(gate x) * up x) with the panel kernels of MatMul (batch-invariant for any
  // count; the experts are prepared like every linear weight), and
  // parks each result at contrib[t * k + j]. Then
  // y[t] = scale * (sum_{j<k} weight[t, j] * contrib[t, j]) with the sum in j order.
  void MoeExperts(const float* x, int n, int hidden, const MoeRouting& r, int k,
                  const ExpertWeights* experts, int num_experts, float scale, float* y) override {
    if (n <= 0) return;
    const int64_t pairs = static_cast<int64_t>(n) * k;
    SPECMOE_CHECK(r.offsets[0] == 0 && r.offsets[num_experts] == pairs,
                  "routing does not cover n * k pairs");
    contrib_.resize(static_cast<size_t>(pairs * hidden));
    for (int e = 0; e < num_experts; ++e) {
      const int m = r.counts[e];
      SPECMOE_CHECK(m >= 0 && r.offsets[e + 1] - r.offsets[e] == m, "routing counts");
      if (m == 0) continue;
      const int32_t* routed = r.pairs + r.offsets[e];
      const ExpertWeights& ex = experts[e];
      SPECMOE_CHECK(ex.gate.cols == hidden && ex.up.cols == hidden && ex.down.rows == hidden &&
                            ex.up.rows == ex.gate.rows && ex.down.cols == ex.gate.rows,
                        "expert weight shapes");
      const int64_t size = ex.gate.rows;
      gathered_.resize(static_cast<size_t>(m) * hidden);
      gate_out_.resize(static_cast<size_t>(m * size));
      up_out_.resize(static_cast<size_t>(m * size));
      expert_out_.resize(static_cast<size_t>(m) * hidden);
      for (int i = 0; i < m; ++i) {
        SPECMOE_CHECK(routed[i] >= 0 && routed[i] < pairs && r.idx[routed[i]] == e,
                      "routing pair list");
        std::memcpy(gathered_.data() + static_cast<int64_t>(i) * hidden,
                    x + static_cast<int64_t>(routed[i] / k) * hidden,
                    static_cast<size_t>(hidden) * sizeof(float));
      }
      GateUpSiluMul(gathered_.data(), m, ex.gate, ex.up, gate_out_.data(), up_out_.data());
      CpuMatMul(gate_out_.data(), m, ex.down, expert_out_.data(), pool_);
      for (int i = 0; i < m; ++i) {
        std::memcpy(contrib_.data() + static_cast<int64_t>(routed[i]) * hidden,
                    expert_out_.data() + static_cast<int64_t>(i) * hidden,
                    static_cast<size_t>(hidden) * sizeof(float));
      }
    }
    const float* weight = r.weight;
    pool_.ParallelFor(
        n,
        [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) {
            float* yt = y + t * hidden;
            for (int i = 0; i < hidden; ++i) {
              float acc = 0.0f;
              for (int j = 0; j < k; ++j) {
                acc += weight[t * k + j] * contrib_[static_cast<size_t>((t * k + j) * hidden + i)];
              }
              yt[i] = scale * acc;
            }
          }
        },
        MinRows(static_cast<int64_t>(hidden) * k));
  }

  // The reductions read the logits in place (host memory); a row is copied only when a
  // penalty must change it.
  void ArgmaxRows(const float* logits, int rows, int vocab, const RowPenalty* penalties,
                  int32_t* out) override {
    for (int r = 0; r < rows; ++r) {
      const float* row = logits + static_cast<size_t>(r) * vocab;
      if (penalties == nullptr || !PenaltyApplies(penalties[r])) {
        out[r] = ArgmaxRow(row, vocab);
        continue;
      }
      row_.assign(row, row + vocab);
      ApplyRepetitionPenalty(row_.data(), vocab, penalties[r]);
      out[r] = ArgmaxRow(row_.data(), vocab);
    }
  }

  bool FindNonFinite(const float* logits, int rows, int vocab, NonFiniteValue* out) override {
    const size_t count = static_cast<size_t>(rows) * vocab;
    for (size_t i = 0; i < count; ++i) {
      if (!std::isfinite(logits[i])) {
        *out = NonFiniteValue{static_cast<int>(i / vocab), static_cast<int>(i % vocab),
                              std::isnan(logits[i])};
        return true;
      }
    }
    return false;
  }

  void ProcessedDistribution(const float* logits, int vocab, const RowPenalty& penalty,
                             const LogitsProcessing& processing, float* probs) override {
    ProcessLogitsRow(logits, vocab, penalty, processing, probs);
  }

  void TopKIds(const float* logits, int vocab, int k, const RowPenalty& penalty,
               int32_t* ids) override {
    if (!PenaltyApplies(penalty)) {
      TopKRow(logits, vocab, k, ids);
      return;
    }
    row_.assign(logits, logits + vocab);
    ApplyRepetitionPenalty(row_.data(), vocab, penalty);
    TopKRow(row_.data(), vocab, k, ids);
  }

 private:
  ThreadPool pool_;
  ForwardDesc fwd_;  // the current forward's description (host pointers, kept as given)
  // Scratch reused across calls (the backend is used by one thread).
  std::vector<float> contrib_;     // [n * k, hidden]
  std::vector<float> gathered_;    // [m, hidden]
  std::vector<float> gate_out_;    // [m, size]
  std::vector<float> up_out_;      // [m, size]
  std::vector<float> expert_out_;  // [m, hidden]
  std::vector<float> row_;         // [vocab] a penalised row of logits
  std::vector<float> norm_;        // [d] a norm weight in f32 (RmsNormMatMulMany)
  std::vector<void*> owned_;       // panels of the prepared linear weights
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(int num_threads) {
  return std::make_unique<CpuBackend>(num_threads);
}

}  // namespace specmoe::kernels
