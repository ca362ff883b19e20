// kernels/backend.h — the op table every compute backend implements (DESIGN.md §5).
//
// A Backend is a small set of math ops over non-owning views of memory that the backend
// itself allocated (host memory for the CPU backend, device memory for CUDA). It knows
// nothing of models, requests or files: the engine composes these ops into the LLaMA and
// LLaMA-MoE forward passes. Modelled on ggml's backend interface: one virtual call per op,
// shapes in `[rows, cols]` notation, row-major, activations always f32, weights in the
// dtype they were stored in.
//
// Tested by tests/cpu_backend_test.cc against naive scalar references (and, for other
// backends, against the CPU backend, which is the reference).
#ifndef SPECMOE_KERNELS_BACKEND_H_
#define SPECMOE_KERNELS_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace specmoe::kernels {

// Storage type of a weight tensor. Activations, norms' outputs and the KV cache are f32.
enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Bytes per element of `dtype`.
size_t DTypeBytes(DType dtype);
// "F32", "F16" or "BF16" (the safetensors spelling).
const char* DTypeName(DType dtype);

// A read-only weight matrix as stored: [rows, cols] row-major and contiguous.
// For a linear layer rows = output features, cols = input features (PyTorch layout);
// for an embedding table rows = vocab, cols = hidden; a norm weight is [1, hidden].
// `data` may be unaligned (safetensors offsets are arbitrary).
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;

  size_t bytes() const { return static_cast<size_t>(rows * cols) * DTypeBytes(dtype); }
};

// One expert of a mixture-of-experts FFN: down(silu(gate x) * up x).
// gate, up: [size, hidden]; down: [hidden, size].
struct ExpertWeights {
  Weight gate;
  Weight up;
  Weight down;
};

// Arguments of paged attention with a per-token visibility rule (causal prefill, decode and
// token-tree verification all use it). The KV cache of one layer is
// k_cache, v_cache: [num_blocks * block_size, n_kv_heads, head_dim] of kv_dtype (f32, or f16
// where the cache was made with an f16 KV option; f16 keys and values are widened to f32 and
// used in the same order, so f16 output equals f32 output over the rounded K/V), addressed by
// physical slot = block_table[seq][logical / block_size] * block_size + logical % block_size.
//
// Query token t (of sequence s = token_seq[t]) sees logical slots [0, visible_prefix[t]) and,
// when tree_mask is not null, logical slot tree_start[s] + j for every bit j set in
// tree_mask[t] (j < 64). Keys are visited in increasing logical slot order and invisible keys
// contribute nothing, so a token's output does not depend on which other tokens are in the
// batch (batch invariance, DESIGN §5).
// out[t, h, :] = softmax(scale * q[t,h,:] . K[visible, h / (n_heads / n_kv_heads), :]) V[...]
struct AttentionArgs {
  const float* q = nullptr;      // [n_tokens, n_heads, head_dim]
  float* out = nullptr;          // [n_tokens, n_heads, head_dim]
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  DType kv_dtype = DType::kF32;  // kF32 or kF16
  int n_tokens = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;            // usually 1 / sqrt(head_dim)
  int block_size = 0;
  const int32_t* block_tables = nullptr;  // [n_seqs, max_blocks_per_seq] physical block ids
  int max_blocks_per_seq = 0;
  const int32_t* token_seq = nullptr;       // [n_tokens] sequence of each query token
  const int32_t* visible_prefix = nullptr;  // [n_tokens]
  const uint64_t* tree_mask = nullptr;      // [n_tokens] or null
  const int32_t* tree_start = nullptr;      // [n_seqs] or null (when tree_mask is null)
};

// The op table. All pointers are backend memory from Alloc() unless marked "host".
// Thread safety: a Backend is used by one thread (the engine's worker); it may use its own
// threads inside an op. Ops are synchronous from the caller's point of view on the CPU;
// device backends order them on one stream and synchronize in CopyToHost.
class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda".
  virtual std::string name() const = 0;

  // Memory. Alloc returns 64-byte aligned memory or null when out of memory.
  virtual void* Alloc(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual void CopyFromHost(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  // Copies within backend memory (regions must not overlap).
  virtual void Copy(void* dst, const void* src, size_t bytes) = 0;
  // Makes a weight stored in host memory (an mmap) usable by this backend. The CPU backend
  // returns it unchanged; a device backend uploads it.
  virtual Weight Upload(const Weight& host_weight) = 0;

  // y[n, w.rows] = x[n, w.cols] . w^T, fp32 accumulation. On the CPU the result of each
  // row is bit-identical whatever n is, for every n (batch invariance, DESIGN §5).
  virtual void MatMul(const float* x, int n, const Weight& w, float* y) = 0;

  // y[i][n, w[i].rows] = x[n, cols] . w[i]^T for i < count (count <= 4; every w[i] has the
  // same cols): the same bits as count MatMul calls, which is what this default does; a
  // backend may run them as one pass (the CPU backend splits all their output rows over its
  // threads at once, for q/k/v and gate/up). w, y: host arrays of count.
  virtual void MatMulMany(const float* x, int n, const Weight* w, float* const* y, int count) {
    for (int i = 0; i < count; ++i) MatMul(x, n, w[i], y[i]);
  }

  // out[n, w.cols] = w[ids[i], :] converted to f32. ids: host, [n].
  virtual void Embedding(const int32_t* ids, int n, const Weight& w, float* out) = 0;

  // y[n, d] = w[d] * x * rsqrt(mean(x^2) + eps), in fp32. w: [1, d]. y may alias x.
  virtual void RmsNorm(const float* x, int n, int d, const Weight& w, float eps, float* y) = 0;

  // In place rotary embedding, HF half-split convention: for each head of x[n, n_heads,
  // head_dim] at position pos[i] (host, [n]), with inv_freq_j = theta^(-2j/head_dim),
  // (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), x1 the first half of the head.
  virtual void Rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos,
                    float theta) = 0;

  // out[n, d] = silu(gate[n, d]) * up[n, d]; silu(a) = a / (1 + exp(-a)). out may alias gate.
  virtual void SiluMul(const float* gate, const float* up, int n, int d, float* out) = 0;

  // y[i] += x[i] for i < count (the residual connection).
  virtual void Add(const float* x, size_t count, float* y) = 0;

  // x[i] = tanh(x[i]) in place.
  virtual void Tanh(float* x, size_t count) = 0;

  // Writes K/V rows: k_cache[slots[i]] = k[i], v_cache[slots[i]] = v[i], stored as kv_dtype
  // (kF32: copied; kF16: each value rounded to nearest even).
  // k, v: [n, row]; slots: host, [n] physical slots; row = n_kv_heads * head_dim.
  virtual void KvWrite(const float* k, const float* v, int n, int row, const int32_t* slots,
                       DType kv_dtype, void* k_cache, void* v_cache) = 0;

  // Moves K/V rows (of kv_dtype) within one layer's cache: cache[dst[i]] = cache[src[i]] for
  // i < n, in order (host arrays of physical slots). Used to compact an accepted tree path.
  virtual void KvMove(const int32_t* src, const int32_t* dst, int n, int row, DType kv_dtype,
                      void* k_cache, void* v_cache) = 0;

  // Attention over the paged KV cache; see AttentionArgs. Host arrays: block_tables,
  // token_seq, visible_prefix, tree_mask, tree_start.
  virtual void Attention(const AttentionArgs& args) = 0;

  // MoE routing: for each row of logits[n, e], the k largest (ties: lower index first),
  // sorted by decreasing logit, and their softmax over those k only (fp32).
  // idx, weight: host, [n, k].
  virtual void TopKSoftmax(const float* logits, int n, int e, int k, int32_t* idx,
                           float* weight) = 0;

  // Mixture of experts FFN: y[t] = scale * sum_{j<k} weight[t,j] * Expert_{idx[t,j]}(x[t]),
  // Expert(x) = down(silu(gate x) * up x). x, y: [n, hidden]; idx, weight: host [n, k];
  // experts: host array of num_experts. The sum runs in j order for every token, so a token's
  // result does not depend on the other tokens in the batch.
  virtual void MoeExperts(const float* x, int n, int hidden, const int32_t* idx,
                          const float* weight, int k, const ExpertWeights* experts,
                          int num_experts, float scale, float* y) = 0;
};

// The CPU backend (kernels/cpu): its own batch-invariant kernels for every row count (no
// BLAS), and a thread pool of `num_threads` (0: all cores).
std::unique_ptr<Backend> CreateCpuBackend(int num_threads);

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_BACKEND_H_
