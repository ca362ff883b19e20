// engine/model/model.cc — LLaMA / LLaMA-MoE forward pass over the Backend op table.
//
// Per layer (engine/README.md, LLaMA):  h += o_proj(attn(rope(q_proj(x)), rope(k_proj(x)),
// v_proj(x))) with x = rms1(h), then h += FFN(rms2(h)); logits = lm_head(norm(h)).
// FFN, llama:      down(silu(gate x) * up x)
// FFN, llama_moe:  g = W2 tanh(W1 x); top-k of g, softmax over those k;
//                  y = score_scale_factor * sum_j softmax_j * Expert_j(x)     (engine/README.md,
// LLaMA-MoE)
#include "engine/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/check.h"

namespace specmoe::engine {

Model::Model(const ModelConfig& config, const ModelWeights& weights, kernels::Backend* backend,
             int max_tokens)
    : config_(config), weights_(weights), backend_(backend), max_tokens_(max_tokens) {}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const ModelConfig& config,
                                                     const ModelWeights& weights,
                                                     kernels::Backend* backend,
                                                     int max_tokens,
                                                     const WeightStore* source) {
  std::unique_ptr<Model> model(new Model(config, weights, backend, max_tokens));
  std::string failed;
  ForEachWeight(model->weights_, [&](kernels::Weight& w, bool linear) {
    if (!failed.empty()) return;
    const kernels::Weight host = w;
    const kernels::Weight made = linear ? backend->PrepareLinear(host) : backend->Upload(host);
    if (made.data == nullptr) {
      failed = absl::StrCat(w.rows, " x ", w.cols, " ", kernels::DTypeName(w.dtype));
      return;
    }
    w = made;
    if (source != nullptr && linear && made.data != host.data) {
      source->DropPages(host.data, host.bytes());
    }
  });
  if (!failed.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot upload the weights to the ", backend->name(), " backend: out of memory at a ",
        failed, " tensor (", model->weights_.layers.size(), " layers)"));
  }

  const size_t t = static_cast<size_t>(max_tokens);
  const int q_dim = config.num_heads * config.head_dim;
  const int kv_dim = config.num_kv_heads * config.head_dim;
  int inter = config.intermediate_size;
  for (const auto& sizes : config.size_experts) {
    for (int s : sizes) inter = std::max(inter, s);
  }
  const int experts = std::max(config.num_experts, 1);
  auto alloc = [&](size_t floats, float** out) {
    return model->Allocate(floats * sizeof(float), reinterpret_cast<void**>(out));
  };
  for (auto [floats, out] : std::initializer_list<std::pair<size_t, float**>>{
           {t * config.hidden_size, &model->x_},
           {t * config.hidden_size, &model->xb_},
           {t * q_dim, &model->q_},
           {t * kv_dim, &model->k_},
           {t * kv_dim, &model->v_},
           {t * q_dim, &model->att_},
           {t * config.hidden_size, &model->ffn_},
           {t * inter, &model->hg_},
           {t * inter, &model->hu_},
           {t * experts, &model->gate_},
           {t * experts, &model->router_},
           {t * config.vocab_size, &model->logits_}}) {
    absl::Status s = alloc(floats, out);
    if (!s.ok()) return s;
  }
  const size_t pairs = t * std::max(config.num_selects, 1);
  kernels::MoeRouting& r = model->routing_;
  for (auto [bytes, out] : std::initializer_list<std::pair<size_t, void**>>{
           {pairs * sizeof(int32_t), reinterpret_cast<void**>(&r.idx)},
           {pairs * sizeof(float), reinterpret_cast<void**>(&r.weight)},
           {pairs * sizeof(int32_t), reinterpret_cast<void**>(&r.pairs)},
           {experts * sizeof(int32_t), reinterpret_cast<void**>(&r.counts)},
           {(experts + 1) * sizeof(int32_t), reinterpret_cast<void**>(&r.offsets)}}) {
    absl::Status s = model->Allocate(bytes, out);
    if (!s.ok()) return s;
  }
  return model;
}

absl::Status Model::Allocate(size_t bytes, void** out) {
  *out = backend_->Alloc(std::max<size_t>(bytes, 1));
  if (*out == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of activations"));
  }
  buffers_.push_back(*out);
  return absl::OkStatus();
}

Model::~Model() {
  // The recordings hold this model's buffers: drop them before the buffers are freed.
  backend_->DropRecordings(recording_id_);
  for (void* b : buffers_) backend_->Free(b);
}

size_t Model::bytes_per_token() const {
  const ModelConfig& c = config_;
  size_t bytes = c.hidden_size * kernels::DTypeBytes(weights_.embed_tokens.dtype);
  bytes += weights_.lm_head.bytes() + weights_.norm.bytes();
  for (size_t i = 0; i < weights_.layers.size(); ++i) {
    const LayerWeights& l = weights_.layers[i];
    bytes += l.input_norm.bytes() + l.q_proj.bytes() + l.k_proj.bytes() + l.v_proj.bytes() +
             l.o_proj.bytes() + l.post_norm.bytes();
    if (c.architecture == Architecture::kLlama) {
      bytes += l.mlp.gate.bytes() + l.mlp.up.bytes() + l.mlp.down.bytes();
    } else {
      bytes += l.gate_w1.bytes() + l.gate_w2.bytes();
      // The num_selects largest experts bound what one token reads.
      std::vector<size_t> expert_bytes;
      for (const kernels::ExpertWeights& e : l.experts) {
        expert_bytes.push_back(e.gate.bytes() + e.up.bytes() + e.down.bytes());
      }
      std::sort(expert_bytes.rbegin(), expert_bytes.rend());
      for (int j = 0; j < c.num_selects && j < static_cast<int>(expert_bytes.size()); ++j) {
        bytes += expert_bytes[j];
      }
    }
  }
  return bytes;
}

void Model::Ffn(const LayerWeights& layer, int n) {
  kernels::Backend& be = *backend_;
  if (config_.architecture == Architecture::kLlama) {
    be.GateUpSiluMul(xb_, n, layer.mlp.gate, layer.mlp.up, hg_, hu_);  // hg_ [n, inter]
    be.MatMulAdd(hg_, n, layer.mlp.down, ffn_, x_);  // x_ += down(hg_), [n, hidden]
    return;
  }
  // LLaMA-MoE: gate g = W2 . tanh(W1 . x), then top-k and softmax over the k.
  const int e = config_.num_experts;
  const int k = config_.num_selects;
  be.MatMul(xb_, n, layer.gate_w1, gate_);  // [n, E]
  be.Tanh(gate_, static_cast<size_t>(n) * e);
  be.MatMul(gate_, n, layer.gate_w2, router_);  // [n, E]
  be.TopKSoftmax(router_, n, e, k, routing_);  // routing stays in backend memory
  be.MoeExperts(xb_, n, config_.hidden_size, routing_, k, layer.experts.data(), e,
                config_.score_scale_factor, ffn_);
  be.Add(ffn_, static_cast<size_t>(n) * config_.hidden_size, x_);
}

void Model::Forward(const ForwardBatch& batch, KvCache& cache, float* logits) {
  const float* rows = Forward(batch, cache);
  if (rows == nullptr) return;
  backend_->CopyToHost(logits, rows,
                       batch.logit_rows.size() * config_.vocab_size * sizeof(float));
}

namespace {

int NextPowerOfTwo(int n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

}  // namespace

uint64_t PadForRecording(const ForwardBatch& batch, int max_tokens, uint64_t salt,
                         ForwardBatch* padded) {
  const int n = batch.n_tokens();
  const int tokens = std::min(NextPowerOfTwo(n), std::max(max_tokens, n));
  const int seqs = NextPowerOfTwo(std::max(batch.n_seqs(), 1));
  const int width = NextPowerOfTwo(std::max(batch.max_blocks_per_seq, 1));
  const int m = static_cast<int>(batch.logit_rows.size());
  const int rows = m == 0 ? 0 : std::min(NextPowerOfTwo(m), tokens);
  *padded = batch;
  padded->tokens.resize(tokens, 0);
  padded->positions.resize(tokens, 0);
  padded->slots.resize(tokens, -1);
  padded->token_seq.resize(tokens, 0);
  padded->visible_prefix.resize(tokens, 0);
  padded->tree_mask.resize(tokens, 0);
  padded->tree_start.resize(seqs, 0);
  padded->block_tables.assign(static_cast<size_t>(seqs) * width, ForwardBatch::kNoBlock);
  for (int s = 0; s < batch.n_seqs(); ++s) {
    std::copy_n(batch.block_tables.begin() + static_cast<size_t>(s) * batch.max_blocks_per_seq,
                batch.max_blocks_per_seq,
                padded->block_tables.begin() + static_cast<size_t>(s) * width);
  }
  padded->max_blocks_per_seq = width;
  if (m > 0) padded->logit_rows.resize(rows, batch.logit_rows.back());
  uint64_t key = salt;
  for (uint64_t part : {uint64_t(tokens), uint64_t(seqs), uint64_t(width), uint64_t(rows)}) {
    key = key * 0x100000001b3ull ^ part;
  }
  return key;
}

const float* Model::Forward(const ForwardBatch& batch, KvCache& cache) {
  const absl::Status valid = Validate(batch, max_tokens_, cache.block_size(), cache.num_blocks());
  SPECMOE_CHECK(valid.ok(), std::string(valid.message()).c_str());
  kernels::Backend& be = *backend_;
  if (batch.n_tokens() == 0) return nullptr;
  if (!recording_ || !be.CanRecord()) {
    // The description, taken into backend memory once; every op reads it there.
    Layers(*be.BeginForward(batch.Desc()), cache);
  } else {
    // One recording per (model, cache, bucket): its kernels point at this model's buffers
    // and this cache's pools, so it is keyed by their never-reused ids, not their addresses.
    const uint64_t bucket = PadForRecording(batch, max_tokens_, cache.recording_id(), &padded_);
    const kernels::RecordingKey key{recording_id_, bucket};
    kernels::ForwardDesc desc = padded_.Desc();
    desc.tree_mask = padded_.tree_mask.data();  // present even when no token uses a tree
    desc.tree_start = padded_.tree_start.data();
    const kernels::ForwardDesc& fwd = *be.BeginForward(desc);
    if (!be.Replay(key)) {
      BucketState& state = buckets_[bucket];
      bool ran = false;
      if (state == BucketState::kRanEagerly) {
        be.BeginRecording(key);
        Layers(fwd, cache);
        ran = be.EndRecording();
        if (!ran) state = BucketState::kNeverRecord;  // an op cannot be recorded: stay eager
      }
      if (state == BucketState::kNew) state = BucketState::kRanEagerly;
      if (!ran) Layers(fwd, cache);
    }
  }
  return batch.logit_rows.empty() ? nullptr : logits_;
}

void Model::Layers(const kernels::ForwardDesc& fwd, KvCache& cache) {
  kernels::Backend& be = *backend_;
  const ModelConfig& c = config_;
  const int n = fwd.n_tokens;
  const int hidden = c.hidden_size;
  const float eps = c.rms_norm_eps;
  be.Embedding(fwd, weights_.embed_tokens, x_);  // [n, hidden]

  kernels::AttentionArgs att;
  att.fwd = &fwd;
  att.q = q_;
  att.out = att_;
  att.n_heads = c.num_heads;
  att.n_kv_heads = c.num_kv_heads;
  att.head_dim = c.head_dim;
  att.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  att.block_size = cache.block_size();
  att.kv_dtype = cache.dtype();

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& layer = weights_.layers[l];
    // Attention block: xb = rms1(x) and q [n, n_heads * head_dim], k and v
    // [n, n_kv_heads * head_dim] from it, in one pass (the fused ops of backend.h).
    const kernels::Weight qkv[3] = {layer.q_proj, layer.k_proj, layer.v_proj};
    float* const qkv_out[3] = {q_, k_, v_};
    be.RmsNormMatMulMany(x_, n, hidden, layer.input_norm, eps, xb_, qkv, qkv_out, 3);
    be.RopeKvWrite(q_, k_, v_, fwd, c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta,
                   c.rope_scaling, cache.dtype(), cache.k(l), cache.v(l));
    att.k_cache = cache.k(l);
    att.v_cache = cache.v(l);
    be.Attention(att);                           // [n, n_heads * head_dim]
    be.MatMulAdd(att_, n, layer.o_proj, xb_, x_);  // x += o_proj(att), [n, hidden]
    // Feed-forward block: x += FFN(rms2(x)).
    be.RmsNorm(x_, n, hidden, layer.post_norm, eps, xb_);
    Ffn(layer, n);
  }

  // Final norm and lm_head only for the rows whose logits are wanted.
  const int m = fwd.n_logit_rows;
  if (m == 0) return;
  be.GatherRows(x_, fwd, hidden, xb_);  // [m, hidden]
  be.RmsNorm(xb_, m, hidden, weights_.norm, eps, xb_);
  be.MatMul(xb_, m, weights_.lm_head, logits_);  // [m, vocab]
}

}  // namespace specmoe::engine
