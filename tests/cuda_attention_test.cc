// tests/cuda_attention_test.cc — kernels/cuda/attention.cu against the CPU backend's
// Attention (kernels/cpu/attention.cc), label cuda; skips when no CUDA device is visible.
//
// Each case builds a host ForwardDesc (prefill chunks, decode tokens and token trees with
// random ancestor masks over several sequences whose block tables are shuffled, so no
// sequence's blocks are contiguous), fills the whole paged cache with random K/V (invisible
// slots too, so a leak shows), runs the CPU backend on the host arrays and the CUDA op on a
// copy of them in device memory, and compares every output element:
//   |gpu - cpu| <= 2e-5 * (1 + |cpu|).
// And batch invariance, exactly: a token's output bits alone, in a mixed batch, among 400
// copies of itself and with a wider block table are the same (backend.h's GPU guarantee).
// Both sides accumulate in fp32 but in different orders (the CPU: 8-lane dots and one
// sequential softmax sum; the GPU: 32-lane shuffled dots, per-warp online softmax, merged
// over warps and splits), which over 4096 keys moves outputs of magnitude <= ~1 by a few
// 1e-6. f16 K/V are widened exactly on both sides, so the same bound holds.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/f16.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/device.h"

namespace specmoe::kernels {
namespace {

// A host description under construction: per-token arrays and per-sequence tables.
struct HostForward {
  int n_seqs = 0;
  int max_blocks_per_seq = 0;
  bool trees = false;
  std::vector<int32_t> token_seq;
  std::vector<int32_t> visible_prefix;
  std::vector<uint64_t> tree_mask;
  std::vector<int32_t> tree_start;    // [n_seqs]
  std::vector<int32_t> block_tables;  // [n_seqs, max_blocks_per_seq]

  int n_tokens() const { return static_cast<int>(token_seq.size()); }

  void AddToken(int seq, int prefix, uint64_t mask) {
    token_seq.push_back(seq);
    visible_prefix.push_back(prefix);
    tree_mask.push_back(mask);
  }
  // count tokens of a causal prefill chunk starting at logical slot `start`.
  void AddPrefill(int seq, int start, int count) {
    for (int i = 0; i < count; ++i) AddToken(seq, start + i + 1, 0);
  }
  // A tree of `nodes` (<= 64) tokens at logical slots start.., each seeing `prefix` and its
  // ancestors (random parents) and itself.
  void AddTree(int seq, int prefix, int start, int nodes, std::mt19937& gen) {
    trees = true;
    tree_start[seq] = start;
    std::vector<uint64_t> masks(nodes);
    for (int i = 0; i < nodes; ++i) {
      const uint64_t parent =
          i == 0 ? 0 : masks[std::uniform_int_distribution<int>(0, i - 1)(gen)];
      masks[i] = parent | (uint64_t{1} << i);
      AddToken(seq, prefix, masks[i]);
    }
  }

  ForwardDesc Desc() const {
    ForwardDesc f;
    f.n_tokens = n_tokens();
    f.n_seqs = n_seqs;
    f.max_blocks_per_seq = max_blocks_per_seq;
    f.token_seq = token_seq.data();
    f.visible_prefix = visible_prefix.data();
    f.tree_mask = trees ? tree_mask.data() : nullptr;
    f.tree_start = trees ? tree_start.data() : nullptr;
    f.block_tables = block_tables.data();
    return f;
  }
};

// Device memory freed at scope end.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    EXPECT_EQ(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), cudaSuccess);
  }
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

struct Shape {
  int n_heads;
  int n_kv_heads;
  int head_dim;
  int block_size;
  DType kv_dtype;
};

std::string ShapeName(const Shape& s) {
  return std::to_string(s.n_heads) + "/" + std::to_string(s.n_kv_heads) + " heads, d " +
         std::to_string(s.head_dim) + ", block " + std::to_string(s.block_size) + ", " +
         DTypeName(s.kv_dtype);
}

class CudaAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::DeviceName();
    // Non-blocking, as the backend's stream (the uploads below synchronize the device).
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
    ctx_ = std::make_unique<cuda::CudaContext>();
    ctx_->stream = stream_;
    cpu_ = CreateCpuBackend(0);  // attention's result does not depend on the thread count
  }
  void TearDown() override {
    ctx_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Sets the tables of `f` for n_seqs sequences of `capacity` logical slots each, over
  // shuffled physical blocks (plus a few unused ones).
  static void Tables(int n_seqs, int capacity, int block_size, std::mt19937& gen,
                     HostForward* f, int* num_blocks) {
    f->n_seqs = n_seqs;
    f->max_blocks_per_seq = (capacity + block_size - 1) / block_size;
    f->tree_start.assign(n_seqs, 0);
    *num_blocks = n_seqs * f->max_blocks_per_seq + 3;
    std::vector<int32_t> physical(*num_blocks);
    std::iota(physical.begin(), physical.end(), 0);
    std::shuffle(physical.begin(), physical.end(), gen);
    f->block_tables.assign(physical.begin(), physical.begin() + n_seqs * f->max_blocks_per_seq);
  }

  // Runs both backends on `f` with random q and caches and compares.
  void Check(const std::string& name, const HostForward& f, int num_blocks, const Shape& s,
             std::mt19937& gen) {
    SCOPED_TRACE(name + " (" + ShapeName(s) + ", " + std::to_string(f.n_tokens()) + " tokens)");
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int n = f.n_tokens();
    const size_t q_count = static_cast<size_t>(n) * s.n_heads * s.head_dim;
    const size_t kv_count =
        static_cast<size_t>(num_blocks) * s.block_size * s.n_kv_heads * s.head_dim;
    std::vector<float> q(q_count);
    for (float& v : q) v = normal(gen);
    std::vector<float> k32(kv_count), v32(kv_count);
    std::vector<uint16_t> k16, v16;
    for (float& v : k32) v = normal(gen);
    for (float& v : v32) v = normal(gen);
    const bool f16 = s.kv_dtype == DType::kF16;
    if (f16) {
      k16.resize(kv_count);
      v16.resize(kv_count);
      for (size_t i = 0; i < kv_count; ++i) {
        k16[i] = F32ToF16(k32[i]);
        v16[i] = F32ToF16(v32[i]);
      }
    }
    const ForwardDesc host_desc = f.Desc();
    AttentionArgs a;
    a.n_heads = s.n_heads;
    a.n_kv_heads = s.n_kv_heads;
    a.head_dim = s.head_dim;
    a.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    a.block_size = s.block_size;
    a.kv_dtype = s.kv_dtype;

    std::vector<float> want(q_count, -1.0f);
    AttentionArgs cpu_args = a;
    cpu_args.fwd = &host_desc;
    cpu_args.q = q.data();
    cpu_args.out = want.data();
    cpu_args.k_cache = f16 ? static_cast<const void*>(k16.data()) : k32.data();
    cpu_args.v_cache = f16 ? static_cast<const void*>(v16.data()) : v32.data();
    cpu_->Attention(cpu_args);

    DeviceBuffer d_seq(f.token_seq), d_prefix(f.visible_prefix), d_mask(f.tree_mask),
        d_start(f.tree_start), d_tables(f.block_tables), d_q(q);
    DeviceBuffer d_k(f16 ? kv_count * 2 : kv_count * 4), d_v(f16 ? kv_count * 2 : kv_count * 4);
    ASSERT_EQ(cudaMemcpy(d_k.get<void>(), f16 ? static_cast<const void*>(k16.data()) : k32.data(),
                         f16 ? kv_count * 2 : kv_count * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(d_v.get<void>(), f16 ? static_cast<const void*>(v16.data()) : v32.data(),
                         f16 ? kv_count * 2 : kv_count * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    DeviceBuffer d_out(q_count * sizeof(float));
    ASSERT_EQ(cudaMemset(d_out.get<void>(), 0xff, q_count * sizeof(float)), cudaSuccess);  // NaN
    ForwardDesc device_desc = host_desc;
    device_desc.token_seq = d_seq.get<int32_t>();
    device_desc.visible_prefix = d_prefix.get<int32_t>();
    device_desc.tree_mask = f.trees ? d_mask.get<uint64_t>() : nullptr;
    device_desc.tree_start = f.trees ? d_start.get<int32_t>() : nullptr;
    device_desc.block_tables = d_tables.get<int32_t>();
    AttentionArgs gpu_args = a;
    gpu_args.fwd = &device_desc;
    gpu_args.q = d_q.get<float>();
    gpu_args.out = d_out.get<float>();
    gpu_args.k_cache = d_k.get<void>();
    gpu_args.v_cache = d_v.get<void>();
    // The legacy-stream copies and memset above must be done before the non-blocking stream
    // (which does not wait for them) starts.
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    cuda::Attention(gpu_args, *ctx_);
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    std::vector<float> got(q_count);
    ASSERT_EQ(cudaMemcpy(got.data(), d_out.get<void>(), q_count * sizeof(float),
                         cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (size_t i = 0; i < q_count; ++i) {
      const float tol = 2e-5f * (1.0f + std::fabs(want[i]));
      const size_t row = i / s.head_dim;
      ASSERT_LE(std::fabs(got[i] - want[i]), tol)
          << "token " << row / s.n_heads << " head " << row % s.n_heads << " element "
          << i % s.head_dim << ": gpu " << got[i] << " cpu " << want[i];
    }
  }

  // The CUDA op alone on `f` with the given q [n_tokens, n_heads, head_dim] and device
  // caches k, v of s.kv_dtype; returns out.
  std::vector<float> Gpu(const HostForward& f, const std::vector<float>& q, const void* k,
                         const void* v, const Shape& s) {
    DeviceBuffer d_seq(f.token_seq), d_prefix(f.visible_prefix), d_mask(f.tree_mask),
        d_start(f.tree_start), d_tables(f.block_tables), d_q(q);
    DeviceBuffer d_out(q.size() * sizeof(float));
    EXPECT_EQ(cudaMemset(d_out.get<void>(), 0xff, q.size() * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ForwardDesc desc = f.Desc();
    desc.token_seq = d_seq.get<int32_t>();
    desc.visible_prefix = d_prefix.get<int32_t>();
    desc.tree_mask = f.trees ? d_mask.get<uint64_t>() : nullptr;
    desc.tree_start = f.trees ? d_start.get<int32_t>() : nullptr;
    desc.block_tables = d_tables.get<int32_t>();
    AttentionArgs a;
    a.fwd = &desc;
    a.q = d_q.get<float>();
    a.out = d_out.get<float>();
    a.k_cache = k;
    a.v_cache = v;
    a.n_heads = s.n_heads;
    a.n_kv_heads = s.n_kv_heads;
    a.head_dim = s.head_dim;
    a.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    a.block_size = s.block_size;
    a.kv_dtype = s.kv_dtype;
    cuda::Attention(a, *ctx_);
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    std::vector<float> out(q.size());
    EXPECT_EQ(cudaMemcpy(out.data(), d_out.get<void>(), out.size() * sizeof(float),
                         cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::CudaContext> ctx_;
  std::unique_ptr<Backend> cpu_;
};

const Shape kShapes[] = {
    {32, 8, 128, 16, DType::kF32}, {32, 8, 128, 16, DType::kF16}, {8, 8, 64, 16, DType::kF32},
    {8, 8, 64, 32, DType::kF16},   {4, 2, 16, 8, DType::kF32},    {4, 2, 33, 8, DType::kF16},
    {8, 8, 256, 16, DType::kF32},  {4, 2, 100, 16, DType::kF32},
};

TEST_F(CudaAttentionTest, DecodeOverContextLengths) {
  std::mt19937 gen(1);
  for (const Shape& s : kShapes) {
    for (int context : {1, 2, 31, 33, 500, 1024, 4096}) {
      HostForward f;
      int num_blocks = 0;
      Tables(1, context, s.block_size, gen, &f, &num_blocks);
      f.AddToken(0, context, 0);
      Check("decode at " + std::to_string(context), f, num_blocks, s, gen);
    }
  }
}

TEST_F(CudaAttentionTest, DecodeWithSpareTableCapacity) {
  // The table can hold 4096 slots but the token sees only a few: most splits get nothing.
  std::mt19937 gen(2);
  for (const Shape& s : kShapes) {
    for (int context : {1, 17, 300}) {
      HostForward f;
      int num_blocks = 0;
      Tables(2, 4096, s.block_size, gen, &f, &num_blocks);
      f.AddToken(1, context, 0);
      f.AddToken(0, 4096 - context, 0);
      Check("decode at " + std::to_string(context) + " of 4096", f, num_blocks, s, gen);
    }
  }
}

TEST_F(CudaAttentionTest, CausalPrefill) {
  std::mt19937 gen(3);
  for (const Shape& s : kShapes) {
    for (int count : {1, 2, 7, 64, 256}) {
      for (int start : {0, 37}) {
        HostForward f;
        int num_blocks = 0;
        Tables(1, start + count, s.block_size, gen, &f, &num_blocks);
        f.AddPrefill(0, start, count);
        Check("prefill of " + std::to_string(count) + " from " + std::to_string(start), f,
              num_blocks, s, gen);
      }
    }
  }
}

TEST_F(CudaAttentionTest, TreesWithAncestorMasks) {
  std::mt19937 gen(4);
  for (const Shape& s : kShapes) {
    for (int prefix : {0, 1, 100, 1000, 4000}) {
      for (int nodes : {1, 5, 20, 64}) {
        HostForward f;
        int num_blocks = 0;
        Tables(1, prefix + 64, s.block_size, gen, &f, &num_blocks);
        f.AddTree(0, prefix, prefix, nodes, gen);
        Check("tree of " + std::to_string(nodes) + " after " + std::to_string(prefix), f,
              num_blocks, s, gen);
      }
    }
  }
}

TEST_F(CudaAttentionTest, TreesWithGapsAndOverlaps) {
  // tree_start after the prefix (slots between are invisible) and before it (tree bits on
  // prefix slots must not count twice), mixed with decode tokens and a token seeing nothing.
  std::mt19937 gen(5);
  for (const Shape& s : kShapes) {
    HostForward f;
    int num_blocks = 0;
    Tables(4, 700, s.block_size, gen, &f, &num_blocks);
    f.AddTree(0, 300, 305, 12, gen);
    f.AddTree(1, 400, 397, 9, gen);
    f.AddToken(2, 650, 0);
    f.AddToken(3, 0, 0);  // sees nothing: zeros
    f.AddTree(3, 0, 0, 3, gen);
    Check("gaps and overlaps", f, num_blocks, s, gen);
  }
}

TEST_F(CudaAttentionTest, MixedBatchOfSequences) {
  std::mt19937 gen(6);
  for (const Shape& s : kShapes) {
    for (bool shuffle_tokens : {false, true}) {
      HostForward f;
      int num_blocks = 0;
      Tables(3, 3100, s.block_size, gen, &f, &num_blocks);
      f.AddToken(0, 3000, 0);
      f.AddTree(1, 200, 200, 32, gen);
      f.AddPrefill(2, 10, 50);
      if (shuffle_tokens) {
        std::vector<int> order(f.n_tokens());
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), gen);
        HostForward g = f;
        for (int i = 0; i < f.n_tokens(); ++i) {
          g.token_seq[i] = f.token_seq[order[i]];
          g.visible_prefix[i] = f.visible_prefix[order[i]];
          g.tree_mask[i] = f.tree_mask[order[i]];
        }
        f = g;
      }
      Check(shuffle_tokens ? "mixed, shuffled" : "mixed", f, num_blocks, s, gen);
    }
  }
}

TEST_F(CudaAttentionTest, ManyTreeTokensAtLongContext) {
  // 256 tokens: four sequences, each with a 64-node tree after a ~4k prefix.
  std::mt19937 gen(7);
  for (const Shape& s : {Shape{4, 2, 128, 16, DType::kF16}, Shape{32, 8, 128, 16, DType::kF32}}) {
    HostForward f;
    int num_blocks = 0;
    Tables(4, 4096 + 64, s.block_size, gen, &f, &num_blocks);
    const int seqs = s.n_heads == 32 ? 1 : 4;  // keep the CPU reference short
    for (int seq = 0; seq < seqs; ++seq) f.AddTree(seq, 4000 + 20 * seq, 4000 + 20 * seq, 64, gen);
    Check("many tree tokens", f, num_blocks, s, gen);
  }
}

// Batch invariance (kernels/backend.h): a token's attention output is bit for bit
// the same alone, in a mixed batch, in a batch of 400 copies of itself, and with a wider
// block table (more key splits launched), because the keys are split by a fixed chunk size and
// merged in chunk order whatever the launch.
TEST_F(CudaAttentionTest, OutputOfATokenDoesNotDependOnItsBatch) {
  std::mt19937 gen(8);
  for (const Shape& s : {Shape{32, 8, 128, 16, DType::kF32}, Shape{4, 2, 33, 8, DType::kF16},
                         Shape{8, 8, 64, 32, DType::kF16}}) {
    SCOPED_TRACE(ShapeName(s));
    HostForward f;
    int num_blocks = 0;
    Tables(3, 3100, s.block_size, gen, &f, &num_blocks);
    f.AddToken(0, 3000, 0);
    f.AddTree(1, 200, 200, 32, gen);
    f.AddPrefill(2, 10, 50);
    f.AddToken(2, 2999, 0);
    const int n = f.n_tokens();
    const size_t row = static_cast<size_t>(s.n_heads) * s.head_dim;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> q(n * row);
    for (float& v : q) v = normal(gen);
    const size_t kv_count =
        static_cast<size_t>(num_blocks) * s.block_size * s.n_kv_heads * s.head_dim;
    const bool f16 = s.kv_dtype == DType::kF16;
    std::vector<float> k32(kv_count), v32(kv_count);
    std::vector<uint16_t> k16(f16 ? kv_count : 0), v16(f16 ? kv_count : 0);
    for (size_t i = 0; i < kv_count; ++i) {
      k32[i] = normal(gen);
      v32[i] = normal(gen);
      if (f16) {
        k16[i] = F32ToF16(k32[i]);
        v16[i] = F32ToF16(v32[i]);
      }
    }
    const size_t kv_bytes = kv_count * (f16 ? 2 : 4);
    DeviceBuffer d_k(kv_bytes), d_v(kv_bytes);  // uploaded once for every run below
    ASSERT_EQ(cudaMemcpy(d_k.get<void>(), f16 ? static_cast<const void*>(k16.data()) : k32.data(),
                         kv_bytes, cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(d_v.get<void>(), f16 ? static_cast<const void*>(v16.data()) : v32.data(),
                         kv_bytes, cudaMemcpyHostToDevice),
              cudaSuccess);
    const void* k = d_k.get<void>();
    const void* v = d_v.get<void>();
    const std::vector<float> batch = Gpu(f, q, k, v, s);

    for (int t = 0; t < n; ++t) {
      const std::vector<float> q_t(q.begin() + t * row, q.begin() + (t + 1) * row);
      // Alone, with its sequence's table only (one split at most for short prefixes).
      HostForward alone;
      alone.n_seqs = 1;
      alone.max_blocks_per_seq = f.max_blocks_per_seq;
      const int seq = f.token_seq[t];
      alone.block_tables.assign(f.block_tables.begin() + seq * f.max_blocks_per_seq,
                                f.block_tables.begin() + (seq + 1) * f.max_blocks_per_seq);
      alone.tree_start = {f.tree_start[seq]};
      alone.trees = f.tree_mask[t] != 0;
      alone.AddToken(0, f.visible_prefix[t], f.tree_mask[t]);
      // The same, with a table 4x as wide (padding blocks never visible).
      HostForward wide = alone;
      wide.max_blocks_per_seq = 4 * f.max_blocks_per_seq;
      wide.block_tables.resize(wide.max_blocks_per_seq, 0);
      // 400 copies of the token (with 32 heads and 13 splits the partial results take two
      // passes through the scratch).
      HostForward copies = alone;
      std::vector<float> q_copies;
      for (int c = 0; c < 400; ++c) {
        if (c > 0) copies.AddToken(0, f.visible_prefix[t], f.tree_mask[t]);
        q_copies.insert(q_copies.end(), q_t.begin(), q_t.end());
      }
      const std::vector<float> want(batch.begin() + t * row, batch.begin() + (t + 1) * row);
      ASSERT_FALSE(std::isnan(want[0])) << "token " << t << " not written";
      const std::pair<std::string, std::vector<float>> runs[] = {
          {"alone", Gpu(alone, q_t, k, v, s)},
          {"wide table", Gpu(wide, q_t, k, v, s)},
          {"400 copies", Gpu(copies, q_copies, k, v, s)}};
      for (const auto& [name, got] : runs) {
        for (size_t c = 0; c < got.size() / row; ++c) {
          ASSERT_EQ(std::memcmp(got.data() + c * row, want.data(), row * sizeof(float)), 0)
              << "token " << t << " " << name << " (copy " << c << ") differs from the batch";
        }
      }
    }
  }
}

}  // namespace
}  // namespace specmoe::kernels
