// kernels/backend.h — the op table every compute backend implements (kernels/README.md).
//
// A Backend is a small set of math ops over non-owning views of memory that the backend
// itself allocated (host memory for the CPU backend, device memory for CUDA). It knows
// nothing of models, requests or files: the engine composes these ops into the LLaMA and
// LLaMA-MoE forward passes. Modelled on ggml's backend interface: one virtual call per op,
// shapes in `[rows, cols]` notation, row-major, activations always f32, weights in the
// dtype they were stored in.
//
// Device-agnostic by construction: nothing on the hot path forces a device-to-host copy.
// A forward's description (ForwardDesc) is taken into backend memory once per forward
// (BeginForward) and every op reads its per-token arrays there; the MoE gate's routing
// (MoeRouting) stays in backend buffers between TopKSoftmax and MoeExperts; logits are
// reduced where they are (ArgmaxRows, FindNonFinite, ProcessedDistribution, TopKIds) and
// only the reductions' results are written to host memory. Host arrays an op still takes
// (weight lists, KvCompact's slots, a penalty's context) are small and go host-to-backend.
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

// How a weight's elements are laid out in memory.
//   kRows:   [rows, cols] row-major and contiguous, as the checkpoint stores it.
//   kPanels: the CPU backend's repacked linear weight (Backend::PrepareLinear):
//            [ceil(rows / kPanelWidth)][cols][kPanelWidth], element (o, k) at
//            ((o / kPanelWidth) * cols + k) * kPanelWidth + o % kPanelWidth; the padding
//            outputs of the last panel are zero; 64-byte aligned (kernels/cpu/matmul.h).
enum class WeightLayout : uint8_t { kRows = 0, kPanels = 1 };
inline constexpr int kPanelWidth = 32;

// A read-only weight matrix [rows, cols] in its stored dtype.
// For a linear layer rows = output features, cols = input features (PyTorch layout);
// for an embedding table rows = vocab, cols = hidden; a norm weight is [1, hidden].
// With kRows, `data` may be unaligned (safetensors offsets are arbitrary).
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  WeightLayout layout = WeightLayout::kRows;

  // The logical size (rows * cols elements; a panel layout's padding not counted).
  size_t bytes() const { return static_cast<size_t>(rows * cols) * DTypeBytes(dtype); }
};

// Host conversions of weights (--dtype at load, tests): row r of a host weight widened to
// f32 (exact), out[w.cols]; and n floats narrowed to `dtype` (round to nearest even) into
// out (unaligned is fine).
void WidenRow(const Weight& w, int64_t r, float* out);
void NarrowRow(const float* x, int64_t n, DType dtype, void* out);

// RoPE frequency scaling of LLaMA-3.x (config.json rope_scaling, rope_type "llama3");
// factor 0 means none. With wavelength w_j = 2 pi / inv_freq_j, L = original_max_position:
// w_j < L / high_freq_factor keeps inv_freq_j; w_j > L / low_freq_factor divides it by factor;
// between, s = (L / w_j - low) / (high - low) and inv_freq_j' = (1 - s) inv_freq_j / factor +
// s inv_freq_j (transformers' _compute_llama3_parameters).
struct RopeScaling {
  float factor = 0;
  float low_freq_factor = 1;
  float high_freq_factor = 4;
  float original_max_position = 8192;
};

// inv_freq[head_dim / 2] of RoPE, in f32 as transformers computes it: 1 / theta^(float(2j) /
// head_dim), then the scaling. Every backend's Rope uses this table.
void RopeInverseFrequencies(int head_dim, float theta, const RopeScaling& scaling,
                            float* inv_freq);

// One expert of a mixture-of-experts FFN: down(silu(gate x) * up x).
// gate, up: [size, hidden]; down: [hidden, size].
struct ExpertWeights {
  Weight gate;
  Weight up;
  Weight down;
};

// The description of one forward pass (kernels/README.md): which tokens run, where they stand and
// which rows' logits are wanted. The host builds it once per forward and hands it to
// Backend::BeginForward, which takes it into backend memory ONCE; every op of that forward
// that needs a per-token or per-sequence array (Embedding, Rope, KvWrite, Attention,
// GatherRows) reads it from the taken description, so no op uploads anything per layer.
// The counts are plain ints (the host sizes launches with them); the arrays are indexed by
// token t < n_tokens or sequence s < n_seqs:
//   tokens[t]          token id (Embedding)
//   positions[t]       RoPE position (Rope)
//   slots[t]           physical KV slot the token's K/V is written to (KvWrite)
//   token_seq[t]       the token's sequence, < n_seqs (Attention)
//   visible_prefix[t]  the token sees logical slots [0, visible_prefix[t]) of its sequence
//   tree_mask[t]       and logical slot tree_start[s] + j for each bit j set (null: no tree)
//   tree_start[s]      (null when tree_mask is null)
//   block_tables[s * max_blocks_per_seq + b]  physical block of logical block b of s
//   logit_rows[i]      token row whose logits are wanted, strictly increasing (GatherRows)
// engine/model/forward_batch.h builds and validates it.
struct ForwardDesc {
  int n_tokens = 0;
  int n_seqs = 0;
  int max_blocks_per_seq = 0;
  int n_logit_rows = 0;
  const int32_t* tokens = nullptr;          // [n_tokens]
  const int32_t* positions = nullptr;       // [n_tokens]
  const int32_t* slots = nullptr;           // [n_tokens]
  const int32_t* token_seq = nullptr;       // [n_tokens]
  const int32_t* visible_prefix = nullptr;  // [n_tokens]
  const uint64_t* tree_mask = nullptr;      // [n_tokens] or null
  const int32_t* tree_start = nullptr;      // [n_seqs] or null
  const int32_t* block_tables = nullptr;    // [n_seqs, max_blocks_per_seq]
  const int32_t* logit_rows = nullptr;      // [n_logit_rows]
};

// Arguments of paged attention with a per-token visibility rule (causal prefill, decode and
// token-tree verification all use it), for the tokens of a taken ForwardDesc. The KV cache
// of one layer is k_cache, v_cache: [num_blocks * block_size, n_kv_heads, head_dim] of
// kv_dtype (f32, or f16 where the cache was made with an f16 KV option; f16 keys and values
// are widened to f32 and used in the same order, so f16 output equals f32 output over the
// rounded K/V), addressed by physical slot
// = block_tables[seq][logical / block_size] * block_size + logical % block_size.
//
// Query token t (of sequence s = token_seq[t]) sees logical slots [0, visible_prefix[t]) and,
// when tree_mask is not null, logical slot tree_start[s] + j for every bit j set in
// tree_mask[t] (j < 64). Invisible keys contribute nothing, and the order in which a token's
// keys are summed depends only on their logical slots (CPU: increasing slot order; CUDA:
// fixed chunks of slots merged in order), so a token's output does not depend on which other
// tokens are in the batch (batch invariance, kernels/README.md; see "Reproducibility" below).
// out[t, h, :] = softmax(scale * q[t,h,:] . K[visible, h / (n_heads / n_kv_heads), :]) V[...]
struct AttentionArgs {
  const ForwardDesc* fwd = nullptr;  // taken by BeginForward: the tokens and their tables
  const float* q = nullptr;          // [fwd->n_tokens, n_heads, head_dim]
  float* out = nullptr;              // [fwd->n_tokens, n_heads, head_dim]
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  DType kv_dtype = DType::kF32;  // kF32 or kF16
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;            // usually 1 / sqrt(head_dim)
  int block_size = 0;
};

// MoE routing of up to max_tokens tokens with k experts each, in backend memory (buffers the
// caller allocates with Alloc): written by TopKSoftmax, read where it is by MoeExperts, so
// the routing never leaves the backend between the gate and the experts (kernels/README.md).
// A pair p = t * k + j is token t's j-th choice.
struct MoeRouting {
  int32_t* idx = nullptr;      // [max_tokens * k] expert of pair p
  float* weight = nullptr;     // [max_tokens * k] its gate weight
  int32_t* counts = nullptr;   // [num_experts] pairs routed to each expert
  int32_t* offsets = nullptr;  // [num_experts + 1] start of each expert's run in `pairs`
  int32_t* pairs = nullptr;    // [max_tokens * k] pairs grouped by expert, increasing within one
};

// The repetition penalty of one row of logits (CTRL / Hugging Face; kernels/cpu/sampling.h):
// each DISTINCT id of context[0, context_size) in [0, vocab) is penalised once. penalty 1
// (or an empty context) changes nothing. context: HOST memory (the prompt and path of a
// sequence live on the host; a device backend uploads them, a host-to-device copy of a few
// ints, never the logits back).
struct RowPenalty {
  float penalty = 1.0f;
  const int32_t* context = nullptr;  // host [context_size]
  int context_size = 0;
};

// How one row of logits becomes a distribution after the penalty (kernels/cpu/sampling.h
// ProcessLogitsRow): temperature 0 is greedy (a one-hot at the argmax); top_k 0 is off;
// top_p 1 is off.
struct LogitsProcessing {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
};

// The first non-finite value of a block of logits, in row-major order.
struct NonFiniteValue {
  int row = 0;    // within the block
  int index = 0;  // token id
  bool nan = false;
};

// The key of a recorded forward: `owner` is the id of what owns the recording (a Model) and
// `bucket` tells its recordings apart (engine/model: the padded shape and the KvCache's id).
// Both ids come from NewRecordingId, so a new model or cache that happens to live at a freed
// one's address never meets a recording made for the freed one.
struct RecordingKey {
  uint64_t owner = 0;
  uint64_t bucket = 0;
  bool operator==(const RecordingKey& o) const {
    return owner == o.owner && bucket == o.bucket;
  }
};

// A process-wide id, never 0 and never returned twice (an atomic counter; thread-safe).
uint64_t NewRecordingId();

// Reproducibility (kernels/README.md, Batch invariance), what each backend guarantees and its
// tests check:
//  - CPU: every op is batch-invariant bit for bit: a row's result does not depend on which
//    other rows or tokens are in the call, for every n (tests/cpu_backend_test.cc), so
//    batched, chunked, cached and speculative outputs equal one-at-a-time outputs exactly.
//  - CUDA: every op is deterministic: the same call on the same data gives the same bits
//    (no atomics in any floating-point sum; cuBLAS, on one stream with a fixed workspace,
//    is run-to-run reproducible for a given shape). These ops are also batch-invariant bit
//    for bit: Embedding, RmsNorm, Rope, SiluMul, Add, Tanh, KvWrite, KvMove, GatherRows,
//    TopKSoftmax, the logits reductions, and Attention (keys split by a fixed chunk of
//    logical slots, merged in order: a token's output bits do not depend on the other
//    tokens, the head count or the block table's width). MatMul / MatMulMany are NOT:
//    cuBLAS picks its algorithm (tile shape, split-K) by the shape, so a row's sums may run
//    in another order when n changes; nor is MoeExperts (the fused kernel's split-K count
//    follows the number of routed pairs; the sequential path uses cuBLAS). A forward's
//    logits on the GPU are therefore reproducible for the same batch (and recording
//    bucket) and differ between batch compositions by fp32 rounding only (about 1e-6
//    relative with f32 weights): a greedy token can differ only where its top-2 logits
//    are that close. Tested by tests/cuda_attention_test.cc (exact invariance),
//    tests/cuda_backend_test.cc (exact invariance of the per-row ops, run-to-run equality)
//    and tests/cuda_model_test.cc (speculative equals plain greedy up to such a near-tie).
//
// The op table. All pointers are backend memory from Alloc() (or a taken ForwardDesc) unless
// marked "host". Thread safety: a Backend is used by one thread (the engine's worker); it may
// use its own threads inside an op. Ops are synchronous from the caller's point of view on
// the CPU; device backends order them on one stream and synchronize only where an op writes
// host memory (CopyToHost and the logits reductions). On the hot path of a forward the only
// host-to-backend transfer is BeginForward, and the only transfers back are the reductions'
// small results.
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
  // returns it unchanged; a device backend uploads it into memory it owns until it is
  // destroyed, and returns a Weight with null data when the device is out of memory (the
  // model then fails its Create with a Status naming the tensor).
  virtual Weight Upload(const Weight& host_weight) = 0;
  // Makes a LINEAR weight (one that is only ever MatMul'd or MoE-experts'd: q/k/v/o,
  // gate/up/down, the MoE gate and experts, lm_head) usable by this backend, in whatever
  // layout its MatMul reads fastest. Default: Upload. The CPU backend copies it into
  // K-major panels it owns (WeightLayout::kPanels), so the host weight may be released
  // (e.g. its mapped pages dropped) as soon as this returns. Null data: out of memory.
  virtual Weight PrepareLinear(const Weight& host_weight) { return Upload(host_weight); }

  // Takes the description of the next forward into backend memory: `host`'s arrays are
  // host memory; the returned description has the same counts and its arrays in backend
  // memory. Valid until the next BeginForward (one forward at a time). The CPU backend keeps
  // host's pointers (no copy: `host`'s arrays must then outlive the forward); a device
  // backend packs all arrays into one upload. Never null.
  virtual const ForwardDesc* BeginForward(const ForwardDesc& host) = 0;

  // y[n, w.rows] = x[n, w.cols] . w^T, fp32 accumulation. On the CPU the result of each
  // row is bit-identical whatever n is, for every n (batch invariance, kernels/README.md): one fp32
  // accumulator per output, fused-multiply-added over k in increasing order
  // (kernels/cpu/matmul.h). w: as Upload or PrepareLinear returned it (the CPU backend also
  // takes a host kRows weight, repacking it per call).
  virtual void MatMul(const float* x, int n, const Weight& w, float* y) = 0;

  // y[i][n, w[i].rows] = x[n, cols] . w[i]^T for i < count (count <= 4; every w[i] has the
  // same cols): the same bits as count MatMul calls, which is what this default does; a
  // backend may run them as one pass (the CPU backend splits all their output rows over its
  // threads at once, for q/k/v and gate/up). w, y: host arrays of count.
  virtual void MatMulMany(const float* x, int n, const Weight* w, float* const* y, int count) {
    for (int i = 0; i < count; ++i) MatMul(x, n, w[i], y[i]);
  }

  // Fused forms of what the model runs per layer. Each default runs the separate ops; a
  // backend may fuse them (the CPU backend folds them into its MatMul's packing and
  // epilogue, or into one pass) as long as every value keeps the separate ops' bits.
  //
  // xb[n, d] = RmsNorm(x, norm, eps), then y[i] = xb . w[i]^T for i < count (MatMulMany).
  virtual void RmsNormMatMulMany(const float* x, int n, int d, const Weight& norm, float eps,
                                 float* xb, const Weight* w, float* const* y, int count) {
    RmsNorm(x, n, d, norm, eps, xb);
    MatMulMany(xb, n, w, y, count);
  }
  // y[n, w.rows] += x . w^T (the residual add after the product: y = y + product).
  // tmp[n, w.rows]: scratch that may receive the product.
  virtual void MatMulAdd(const float* x, int n, const Weight& w, float* tmp, float* y) {
    MatMul(x, n, w, tmp);
    Add(tmp, static_cast<size_t>(n) * w.rows, y);
  }
  // gate_out[n, gate.rows] = silu(x . gate^T) * (x . up^T) (MatMulMany, then SiluMul).
  // up_out[n, up.rows]: scratch that may receive the up product.
  virtual void GateUpSiluMul(const float* x, int n, const Weight& gate, const Weight& up,
                             float* gate_out, float* up_out) {
    const Weight w[2] = {gate, up};
    float* const y[2] = {gate_out, up_out};
    MatMulMany(x, n, w, y, 2);
    SiluMul(gate_out, up_out, n, static_cast<int>(gate.rows), gate_out);
  }
  // Rope of q [n, n_heads * head_dim] and k [n, n_kv_heads * head_dim] in place, then
  // KvWrite of k and v (row n_kv_heads * head_dim). fwd: taken.
  virtual void RopeKvWrite(float* q, float* k, const float* v, const ForwardDesc& fwd,
                           int n_heads, int n_kv_heads, int head_dim, float theta,
                           const RopeScaling& scaling, DType kv_dtype, void* k_cache,
                           void* v_cache) {
    Rope(q, fwd, n_heads, head_dim, theta, scaling);
    Rope(k, fwd, n_kv_heads, head_dim, theta, scaling);
    KvWrite(k, v, fwd, n_kv_heads * head_dim, kv_dtype, k_cache, v_cache);
  }

  // out[fwd.n_tokens, w.cols] = w[fwd.tokens[t], :] converted to f32. fwd: taken.
  virtual void Embedding(const ForwardDesc& fwd, const Weight& w, float* out) = 0;

  // y[n, d] = w[d] * x * rsqrt(mean(x^2) + eps), in fp32. w: [1, d]. y may alias x.
  virtual void RmsNorm(const float* x, int n, int d, const Weight& w, float eps, float* y) = 0;

  // In place rotary embedding, HF half-split convention: for each head of
  // x[fwd.n_tokens, n_heads, head_dim] at position fwd.positions[t] (fwd: taken), with
  // inv_freq_j = RopeInverseFrequencies(head_dim, theta, scaling)[j],
  // (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), x1 the first half of the head.
  virtual void Rope(float* x, const ForwardDesc& fwd, int n_heads, int head_dim, float theta,
                    const RopeScaling& scaling) = 0;

  // out[n, d] = silu(gate[n, d]) * up[n, d]; silu(a) = a / (1 + exp(-a)). out may alias gate.
  virtual void SiluMul(const float* gate, const float* up, int n, int d, float* out) = 0;

  // y[i] += x[i] for i < count (the residual connection).
  virtual void Add(const float* x, size_t count, float* y) = 0;

  // x[i] = tanh(x[i]) in place.
  virtual void Tanh(float* x, size_t count) = 0;

  // Writes K/V rows of the forward's tokens: k_cache[fwd.slots[t]] = k[t],
  // v_cache[fwd.slots[t]] = v[t] for t < fwd.n_tokens (fwd: taken), stored as kv_dtype
  // (kF32: copied; kF16: each value rounded to nearest even). k, v: [n_tokens, row];
  // row = n_kv_heads * head_dim.
  virtual void KvWrite(const float* k, const float* v, const ForwardDesc& fwd, int row,
                       DType kv_dtype, void* k_cache, void* v_cache) = 0;

  // KV compaction of one cache, every layer at once: for every layer l and i < n, in order
  // of i, k_caches[l][dst[i]] = k_caches[l][src[i]] and the same in v_caches[l] (rows of
  // `row` kv_dtype elements). src, dst: host arrays of physical slots, every request's
  // moves of the step concatenated (one call per cache per step after verification, not
  // part of a forward; a device backend uploads them once and launches once).
  // k_caches, v_caches: host arrays of `layers` pools each.
  virtual void KvCompact(const int32_t* src, const int32_t* dst, int n, int row, DType kv_dtype,
                         void* const* k_caches, void* const* v_caches, int layers) = 0;

  // Attention over the paged KV cache; see AttentionArgs. Its tables come from args.fwd.
  virtual void Attention(const AttentionArgs& args) = 0;

  // out[i, :] = x[fwd.logit_rows[i], :] for i < fwd.n_logit_rows (fwd: taken); x, out:
  // [.., cols]. out may alias x (the rows are strictly increasing, so row i is read before
  // it is overwritten).
  virtual void GatherRows(const float* x, const ForwardDesc& fwd, int cols, float* out) = 0;

  // MoE routing: for each row of logits[n, e], the k largest (ties: lower index first),
  // sorted by decreasing logit, and their softmax over those k only (fp32), written to
  // routing.idx and routing.weight [n, k]; then routing.counts[x] = number of pairs routed to
  // expert x, routing.offsets[x] = sum of counts below x, and
  // routing.pairs[offsets[x] .. offsets[x + 1]) = those pairs t * k + j in increasing order.
  virtual void TopKSoftmax(const float* logits, int n, int e, int k,
                           const MoeRouting& routing) = 0;

  // Mixture of experts FFN over the routing TopKSoftmax wrote for the same n and k:
  // y[t] = scale * sum_{j<k} weight[t,j] * Expert_{idx[t,j]}(x[t]),
  // Expert(x) = down(silu(gate x) * up x). x, y: [n, hidden]; experts: host array of
  // num_experts. The sum runs in j order for every token, so a token's result does not depend
  // on the other tokens in the batch.
  virtual void MoeExperts(const float* x, int n, int hidden, const MoeRouting& routing, int k,
                          const ExpertWeights* experts, int num_experts, float scale,
                          float* y) = 0;

  // --- Reductions of logits where they are (kernels/README.md): only their results come back. ---

  // out[r] = the argmax of row r of logits[rows, vocab] after the repetition penalty
  // penalties[r] (ties: lowest id; kernels/cpu/sampling.h ArgmaxRow). penalties: host
  // [rows], or null for none; out: host [rows].
  virtual void ArgmaxRows(const float* logits, int rows, int vocab, const RowPenalty* penalties,
                          int32_t* out) = 0;

  // The first NaN or infinite value of logits[rows, vocab] in row-major order: true and
  // *out (host) set, or false when every value is finite.
  virtual bool FindNonFinite(const float* logits, int rows, int vocab, NonFiniteValue* out) = 0;

  // probs[vocab] (host) := the processed distribution of one row of logits [vocab]: penalty,
  // then temperature, top-k, top-p and softmax (kernels/cpu/sampling.h ProcessLogitsRow,
  // with its tie rules).
  virtual void ProcessedDistribution(const float* logits, int vocab, const RowPenalty& penalty,
                                     const LogitsProcessing& processing, float* probs) = 0;

  // ids[min(k, vocab)] (host) := the k largest ids of one row of logits [vocab] after the
  // penalty, in descending order, ties lower id first (kernels/cpu/sampling.h TopKRow): a
  // greedy tree's children.
  virtual void TopKIds(const float* logits, int vocab, int k, const RowPenalty& penalty,
                       int32_t* ids) = 0;

  // --- Recorded forwards (kernels/README.md): a backend that can record the ops of a forward and
  // replay them (CUDA graphs) says so; the CPU backend cannot and runs every op eagerly.
  // A recording spans the ops after BeginForward up to (not including) the logits
  // reductions; those ops must not write host memory. Replays read the description
  // BeginForward took last, which must have had the same counts as the recording's.
  // A recording holds the addresses of the buffers its ops used, so it is keyed by ids that
  // are never reused (RecordingKey), never by heap addresses, and its owner drops it before
  // those buffers are freed (DropRecordings).
  virtual bool CanRecord() const { return false; }
  // Records the ops issued from now on under `key` (nothing runs until EndRecording).
  virtual void BeginRecording(const RecordingKey& key) {}
  // Ends the recording and runs it once: true. False when an op could not be recorded (it
  // would have to sync the host): then nothing of it ran, and the caller issues the ops again
  // eagerly.
  virtual bool EndRecording() { return true; }
  // Runs recording `key` and returns true, or returns false when there is none.
  virtual bool Replay(const RecordingKey& key) { return false; }
  // Destroys every recording of `owner` (not inside a recording). A Model calls it when it is
  // destroyed; a replay still in flight completes first.
  virtual void DropRecordings(uint64_t owner) {}
};

// The CPU backend (kernels/cpu): its own batch-invariant kernels for every row count (no
// BLAS), and a thread pool of `num_threads` (0: all cores).
std::unique_ptr<Backend> CreateCpuBackend(int num_threads);

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_BACKEND_H_
