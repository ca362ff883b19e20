// kernels/cuda/cuda_backend.cu — CudaBackend, the Backend op table on one CUDA device (see
// cuda_backend.h; the maths of every op is in kernels/backend.h and each kernel's .cu).
//
// Memory: Alloc is plain cudaMalloc (256-byte aligned, null when out of memory; never managed
// memory). Upload copies a host weight into device memory the backend owns until it is
// destroyed (data == nullptr when out of memory). Copies run on the stream; the ones that
// touch host memory wait for it.
// The forward's description: BeginForward packs every array of the host ForwardDesc into a
// pinned buffer of its own (not ctx.host_staging, which the reductions rewrite while the
// copy may still be queued), at offsets that depend only on the counts and on whether a tree
// mask is given (DescLayout), then ONE cudaMemcpyAsync into a device buffer of fixed
// capacity, and returns a description whose arrays point into that buffer. So a recorded
// forward (a CUDA graph, whose kernels hold those pointers) reads the arrays of the latest
// BeginForward with the same counts when it is replayed. The device buffer only grows when a
// description does not fit, and then every recording is discarded. The pinned buffer is
// rewritten only after the previous copy from it is done (an event).
// Recordings: stream capture (thread-local mode) of the ops between BeginRecording and
// EndRecording, instantiated as a cudaGraphExec_t per RecordingKey (never-reused ids, not
// addresses), ordered by owner so that DropRecordings(owner) destroys an owner's recordings
// when it is destroyed; ctx.capturing is set meanwhile so
// that scratch buffers refuse to grow. cuBLAS gets a fixed workspace so that it never
// allocates inside a capture.
// Tested against the CPU backend by tests/cuda_backend_test.cc.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/check.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cublas_check.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/sampling.h"

namespace specmoe::kernels::cuda {
namespace {

// cuBLAS's recommended workspace on Hopper; set once so cuBLAS never allocates in a capture.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// Initial device description capacity: 256 tokens and 64 sequences of 1k blocks fit.
constexpr size_t kInitialDescBytes = size_t{512} << 10;
constexpr size_t kDescAlign = 16;

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Byte offsets of a description's arrays in the packed buffer: a function of the counts and
// of whether the tree arrays are present, nothing else.
struct DescLayout {
  size_t tokens = 0, positions = 0, slots = 0, token_seq = 0, visible_prefix = 0;
  size_t tree_mask = 0, tree_start = 0, block_tables = 0, logit_rows = 0;
  size_t bytes = 0;
};

DescLayout LayoutFor(const ForwardDesc& d) {
  SPECMOE_CHECK(
      d.n_tokens >= 0 && d.n_seqs >= 0 && d.max_blocks_per_seq >= 0 && d.n_logit_rows >= 0,
      "negative count in a forward description");
  DescLayout l;
  size_t end = 0;
  auto take = [&end](size_t bytes) {
    const size_t at = end;
    end = RoundUp(at + bytes, kDescAlign);
    return at;
  };
  const size_t tokens = static_cast<size_t>(d.n_tokens);
  l.tokens = take(tokens * sizeof(int32_t));
  l.positions = take(tokens * sizeof(int32_t));
  l.slots = take(tokens * sizeof(int32_t));
  l.token_seq = take(tokens * sizeof(int32_t));
  l.visible_prefix = take(tokens * sizeof(int32_t));
  if (d.tree_mask != nullptr) {
    l.tree_mask = take(tokens * sizeof(uint64_t));
    l.tree_start = take(static_cast<size_t>(d.n_seqs) * sizeof(int32_t));
  }
  l.block_tables = take(static_cast<size_t>(d.n_seqs) * d.max_blocks_per_seq * sizeof(int32_t));
  l.logit_rows = take(static_cast<size_t>(d.n_logit_rows) * sizeof(int32_t));
  l.bytes = end;
  return l;
}

std::string CudaError(const char* call, cudaError_t err) {
  return absl::StrCat(call, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

std::string CublasError(const char* call, cublasStatus_t status) {
  return absl::StrCat(call, ": ", cublasGetStatusName(status), " (", cublasGetStatusString(status),
                      ")");
}

// Contract: see cuda_backend.h. Owns its stream, cuBLAS handle and workspace, the uploaded
// weights, the description buffers and the recordings; the destructor waits for the stream
// and frees them all.
class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {}

  ~CudaBackend() override {
    if (ctx_.stream != nullptr) {
      SPECMOE_CUDA_CHECK(cudaSetDevice(device_));
      if (ctx_.capturing) {
        // A recording left open: end it and drop what it captured.
        cudaGraph_t graph = nullptr;
        cudaStreamEndCapture(ctx_.stream, &graph);
        if (graph != nullptr) cudaGraphDestroy(graph);
        cudaGetLastError();
        ctx_.capturing = false;
      }
      SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    }
    DiscardRecordings();
    moe_.reset();
    for (void* ptr : uploads_) SPECMOE_CUDA_CHECK(cudaFree(ptr));
    if (desc_device_ != nullptr) SPECMOE_CUDA_CHECK(cudaFree(desc_device_));
    if (desc_copied_ != nullptr) SPECMOE_CUDA_CHECK(cudaEventDestroy(desc_copied_));
    if (staging_copied_ != nullptr) SPECMOE_CUDA_CHECK(cudaEventDestroy(staging_copied_));
    if (ctx_.cublas != nullptr) SPECMOE_CUBLAS_CHECK(cublasDestroy(ctx_.cublas));
    if (cublas_workspace_ != nullptr) SPECMOE_CUDA_CHECK(cudaFree(cublas_workspace_));
    if (ctx_.stream != nullptr) SPECMOE_CUDA_CHECK(cudaStreamDestroy(ctx_.stream));
  }

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  // Everything that can fail for reasons outside the program: the device, the stream, cuBLAS
  // and the fixed buffers. The destructor releases what was created before a failure.
  absl::Status Init() {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return absl::UnavailableError(
          absl::StrCat("no CUDA device: ", CudaError("cudaGetDeviceCount", err)));
    }
    if (device_ < 0 || device_ >= count) {
      return absl::NotFoundError(
          absl::StrCat("CUDA device ", device_, " does not exist (", count, " visible)"));
    }
    if ((err = cudaSetDevice(device_)) != cudaSuccess) {
      cudaGetLastError();
      return absl::UnavailableError(
          CudaError(absl::StrCat("cudaSetDevice(", device_, ")").c_str(), err));
    }
    if ((err = cudaStreamCreateWithFlags(&ctx_.stream, cudaStreamNonBlocking)) != cudaSuccess) {
      ctx_.stream = nullptr;
      cudaGetLastError();
      return absl::UnavailableError(CudaError("cudaStreamCreateWithFlags", err));
    }
    cublasStatus_t status = cublasCreate(&ctx_.cublas);
    if (status != CUBLAS_STATUS_SUCCESS) {
      ctx_.cublas = nullptr;
      return absl::UnavailableError(CublasError("cublasCreate", status));
    }
    // cublasSetStream resets the workspace to cuBLAS's own pool: the stream first, then the
    // workspace. Default math: f32 GEMMs stay exact fp32 (no TF32).
    if ((status = cublasSetStream(ctx_.cublas, ctx_.stream)) != CUBLAS_STATUS_SUCCESS) {
      return absl::UnavailableError(CublasError("cublasSetStream", status));
    }
    if ((status = cublasSetMathMode(ctx_.cublas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
      return absl::UnavailableError(CublasError("cublasSetMathMode", status));
    }
    if ((err = cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes)) != cudaSuccess) {
      cublas_workspace_ = nullptr;
      cudaGetLastError();
      return absl::ResourceExhaustedError(CudaError("cudaMalloc(cuBLAS workspace)", err));
    }
    if ((status = cublasSetWorkspace(ctx_.cublas, cublas_workspace_, kCublasWorkspaceBytes)) !=
        CUBLAS_STATUS_SUCCESS) {
      return absl::UnavailableError(CublasError("cublasSetWorkspace", status));
    }
    if ((err = cudaMalloc(&desc_device_, kInitialDescBytes)) != cudaSuccess) {
      desc_device_ = nullptr;
      cudaGetLastError();
      return absl::ResourceExhaustedError(CudaError("cudaMalloc(forward description)", err));
    }
    desc_capacity_ = kInitialDescBytes;
    for (cudaEvent_t* event : {&desc_copied_, &staging_copied_}) {
      if ((err = cudaEventCreateWithFlags(event, cudaEventDisableTiming)) != cudaSuccess) {
        *event = nullptr;
        cudaGetLastError();
        return absl::UnavailableError(CudaError("cudaEventCreateWithFlags", err));
      }
    }
    moe_ = CreateFusedMoeExperts();
    return absl::OkStatus();
  }

  std::string name() const override { return "cuda"; }

  void* Alloc(size_t bytes) override {
    SPECMOE_CHECK(!ctx_.capturing, "Alloc inside a recording");
    MakeCurrent();
    void* ptr = nullptr;
    if (cudaMalloc(&ptr, std::max<size_t>(bytes, 1)) != cudaSuccess) {
      cudaGetLastError();  // out of memory is not sticky: clear it for the next check
      return nullptr;
    }
    return ptr;
  }

  void Free(void* ptr) override {
    if (ptr == nullptr) return;
    SPECMOE_CHECK(!ctx_.capturing, "Free inside a recording");
    uploads_.erase(ptr);
    SPECMOE_CUDA_CHECK(cudaFree(ptr));
  }

  // Waits for the stream, so `host_src` (pageable or pinned) may change once this returns.
  void CopyFromHost(void* dst, const void* host_src, size_t bytes) override {
    SPECMOE_CHECK(!ctx_.capturing, "CopyFromHost inside a recording");
    if (bytes == 0) return;
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx_.stream));
    SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }

  void CopyToHost(void* host_dst, const void* src, size_t bytes) override {
    SPECMOE_CHECK(!ctx_.capturing, "CopyToHost inside a recording");
    if (bytes == 0) return;
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
    SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }

  void Copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream));
  }

  // data == nullptr (same dtype and shape) when the device is out of memory.
  Weight Upload(const Weight& host_weight) override {
    SPECMOE_CHECK(!ctx_.capturing, "Upload inside a recording");
    MakeCurrent();
    Weight device = host_weight;
    device.data = nullptr;
    const size_t bytes = host_weight.bytes();
    void* ptr = nullptr;
    if (cudaMalloc(&ptr, std::max<size_t>(bytes, 1)) != cudaSuccess) {
      cudaGetLastError();
      return device;
    }
    if (bytes > 0) {
      SPECMOE_CUDA_CHECK(
          cudaMemcpyAsync(ptr, host_weight.data, bytes, cudaMemcpyHostToDevice, ctx_.stream));
      SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    }
    uploads_.insert(ptr);
    device.data = ptr;
    return device;
  }

  const ForwardDesc* BeginForward(const ForwardDesc& host) override {
    SPECMOE_CHECK(!ctx_.capturing, "BeginForward inside a recording");
    SPECMOE_CHECK(host.tree_mask == nullptr || host.tree_start != nullptr,
                  "a tree mask without tree_start");
    MakeCurrent();
    const DescLayout l = LayoutFor(host);
    if (l.bytes > desc_capacity_) GrowDescription(l.bytes);
    // The previous description's copy must have left the pinned buffer before it is rewritten
    // (or freed by a growth).
    SPECMOE_CUDA_CHECK(cudaEventSynchronize(desc_copied_));
    char* packed = static_cast<char*>(desc_host_.Get(l.bytes, false));
    char* base = static_cast<char*>(desc_device_);
    // Copies `count` elements of `src` (host) to offset `at` of the packed buffer and returns
    // where they will be on the device; null stays null.
    auto put = [&](const auto* src, size_t count, size_t at) {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(src)>>;
      if (src == nullptr) return static_cast<const T*>(nullptr);
      if (count > 0) std::memcpy(packed + at, src, count * sizeof(T));
      return reinterpret_cast<const T*>(base + at);
    };
    const size_t tokens = static_cast<size_t>(host.n_tokens);
    fwd_ = ForwardDesc{};
    fwd_.n_tokens = host.n_tokens;
    fwd_.n_seqs = host.n_seqs;
    fwd_.max_blocks_per_seq = host.max_blocks_per_seq;
    fwd_.n_logit_rows = host.n_logit_rows;
    fwd_.tokens = put(host.tokens, tokens, l.tokens);
    fwd_.positions = put(host.positions, tokens, l.positions);
    fwd_.slots = put(host.slots, tokens, l.slots);
    fwd_.token_seq = put(host.token_seq, tokens, l.token_seq);
    fwd_.visible_prefix = put(host.visible_prefix, tokens, l.visible_prefix);
    if (host.tree_mask != nullptr) {
      fwd_.tree_mask = put(host.tree_mask, tokens, l.tree_mask);
      fwd_.tree_start = put(host.tree_start, static_cast<size_t>(host.n_seqs), l.tree_start);
    }
    fwd_.block_tables =
        put(host.block_tables, static_cast<size_t>(host.n_seqs) * host.max_blocks_per_seq,
            l.block_tables);
    fwd_.logit_rows = put(host.logit_rows, static_cast<size_t>(host.n_logit_rows), l.logit_rows);
    if (l.bytes > 0) {
      SPECMOE_CUDA_CHECK(
          cudaMemcpyAsync(desc_device_, packed, l.bytes, cudaMemcpyHostToDevice, ctx_.stream));
      SPECMOE_CUDA_CHECK(cudaEventRecord(desc_copied_, ctx_.stream));
    }
    return &fwd_;
  }

  void MatMul(const float* x, int n, const Weight& w, float* y) override {
    Gemm(x, n, static_cast<int>(w.cols), w, y, static_cast<int>(w.rows), ctx_);
  }

  void MatMulMany(const float* x, int n, const Weight* w, float* const* y, int count) override {
    SPECMOE_CHECK(count >= 0 && count <= 4, "MatMulMany takes at most 4 matrices");
    for (int i = 0; i < count; ++i) MatMul(x, n, w[i], y[i]);
  }

  void Embedding(const ForwardDesc& fwd, const Weight& w, float* out) override {
    cuda::Embedding(fwd, w, out, ctx_);
  }

  void RmsNorm(const float* x, int n, int d, const Weight& w, float eps, float* y) override {
    cuda::RmsNorm(x, n, d, w, eps, y, ctx_);
  }

  void Rope(float* x, const ForwardDesc& fwd, int n_heads, int head_dim, float theta,
            const RopeScaling& scaling) override {
    cuda::Rope(x, fwd, n_heads, head_dim, theta, scaling, ctx_);
  }

  void SiluMul(const float* gate, const float* up, int n, int d, float* out) override {
    cuda::SiluMul(gate, up, n, d, d, out, ctx_);
  }

  void Add(const float* x, size_t count, float* y) override { cuda::Add(x, count, y, ctx_); }

  void Tanh(float* x, size_t count) override { cuda::Tanh(x, count, ctx_); }

  void KvWrite(const float* k, const float* v, const ForwardDesc& fwd, int row, DType kv_dtype,
               void* k_cache, void* v_cache) override {
    cuda::KvWrite(k, v, fwd, row, kv_dtype, k_cache, v_cache, ctx_);
  }

  // src, dst (host [n]) go through ctx.host_staging into ctx.side_scratch as [src | dst]; the call
  // waits for that small copy (not for the moves), so the staging is free when it returns:
  // one host wait per cache per step, whatever the layers and requests.
  void KvCompact(const int32_t* src, const int32_t* dst, int n, int row, DType kv_dtype,
                 void* const* k_caches, void* const* v_caches, int layers) override {
    if (n <= 0 || layers <= 0) return;
    SPECMOE_CHECK(!ctx_.capturing, "KvCompact inside a recording (its slots are host memory)");
    MakeCurrent();
    const size_t bytes = 2 * static_cast<size_t>(n) * sizeof(int32_t);
    int32_t* staged = static_cast<int32_t*>(ctx_.Staging(bytes));
    int32_t* slots = static_cast<int32_t*>(ctx_.SideScratch(bytes));  // [2, n]
    std::memcpy(staged, src, n * sizeof(int32_t));
    std::memcpy(staged + n, dst, n * sizeof(int32_t));
    SPECMOE_CUDA_CHECK(cudaMemcpyAsync(slots, staged, bytes, cudaMemcpyHostToDevice, ctx_.stream));
    SPECMOE_CUDA_CHECK(cudaEventRecord(staging_copied_, ctx_.stream));
    cuda::KvCompact(slots, slots + n, n, row, kv_dtype, k_caches, v_caches, layers, ctx_);
    SPECMOE_CUDA_CHECK(cudaEventSynchronize(staging_copied_));
  }

  void Attention(const AttentionArgs& args) override {
    SPECMOE_CHECK(args.n_kv_heads > 0 && args.n_heads % args.n_kv_heads == 0,
                  "n_heads must be a multiple of n_kv_heads");
    cuda::Attention(args, ctx_);
  }

  // out may alias x (backend.h); the kernel must not, so an overlapping call gathers into
  // scratch and copies back.
  void GatherRows(const float* x, const ForwardDesc& fwd, int cols, float* out) override {
    if (fwd.n_logit_rows <= 0 || cols <= 0) return;
    const size_t out_bytes = static_cast<size_t>(fwd.n_logit_rows) * cols * sizeof(float);
    const size_t x_bytes = static_cast<size_t>(fwd.n_tokens) * cols * sizeof(float);
    const char* xb = reinterpret_cast<const char*>(x);
    const char* ob = reinterpret_cast<const char*>(out);
    if (ob >= xb + x_bytes || xb >= ob + out_bytes) {
      cuda::GatherRows(x, fwd, cols, out, ctx_);
      return;
    }
    float* gathered = static_cast<float*>(ctx_.Scratch(out_bytes));  // [n_logit_rows, cols]
    cuda::GatherRows(x, fwd, cols, gathered, ctx_);
    Copy(out, gathered, out_bytes);
  }

  void TopKSoftmax(const float* logits, int n, int e, int k, const MoeRouting& routing) override {
    cuda::TopKSoftmax(logits, n, e, k, routing, ctx_);
  }

  void MoeExperts(const float* x, int n, int hidden, const MoeRouting& routing, int k,
                  const ExpertWeights* experts, int num_experts, float scale, float* y) override {
    moe_->Run(x, n, hidden, routing, k, experts, num_experts, scale, y, ctx_);
  }

  void ArgmaxRows(const float* logits, int rows, int vocab, const RowPenalty* penalties,
                  int32_t* out) override {
    cuda::ArgmaxRows(logits, rows, vocab, penalties, out, ctx_);
  }

  bool FindNonFinite(const float* logits, int rows, int vocab, NonFiniteValue* out) override {
    return cuda::FindNonFinite(logits, rows, vocab, out, ctx_);
  }

  void ProcessedDistribution(const float* logits, int vocab, const RowPenalty& penalty,
                             const LogitsProcessing& processing, float* probs) override {
    cuda::ProcessedDistribution(logits, vocab, penalty, processing, probs, ctx_);
  }

  void TopKIds(const float* logits, int vocab, int k, const RowPenalty& penalty,
               int32_t* ids) override {
    cuda::TopKIds(logits, vocab, k, penalty, ids, ctx_);
  }

  bool CanRecord() const override { return true; }

  // The recording remembers the layout of the description it was made on (that of the last
  // BeginForward): a replay on a description of another layout would read wrong offsets.
  void BeginRecording(const RecordingKey& key) override {
    SPECMOE_CHECK(!ctx_.capturing, "BeginRecording inside a recording");
    SPECMOE_CUDA_CHECK(cudaStreamBeginCapture(ctx_.stream, cudaStreamCaptureModeThreadLocal));
    ctx_.capturing = true;
    recording_key_ = {key.owner, key.bucket};
  }

  bool EndRecording() override {
    SPECMOE_CHECK(ctx_.capturing, "EndRecording without BeginRecording");
    cudaGraph_t graph = nullptr;
    const cudaError_t err = cudaStreamEndCapture(ctx_.stream, &graph);
    ctx_.capturing = false;
    SPECMOE_CUDA_CHECK(err);
    if (ctx_.capture_failed) {
      // An op could not be captured: nothing of this recording ran; the caller reruns eagerly.
      ctx_.capture_failed = false;
      SPECMOE_CUDA_CHECK(cudaGraphDestroy(graph));
      return false;
    }
    cudaGraphExec_t exec = nullptr;
    SPECMOE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    SPECMOE_CUDA_CHECK(cudaGraphDestroy(graph));
    const Recording recording{exec, LayoutOf(fwd_), ctx_.scratch.generation()};
    auto [it, inserted] = recordings_.try_emplace(recording_key_, recording);
    if (!inserted) {
      // Freed once a replay still in flight is done (cudaGraphExecDestroy's contract).
      SPECMOE_CUDA_CHECK(cudaGraphExecDestroy(it->second.exec));
      it->second = recording;
    }
    SPECMOE_CUDA_CHECK(cudaGraphLaunch(exec, ctx_.stream));
    return true;
  }

  bool Replay(const RecordingKey& key) override {
    SPECMOE_CHECK(!ctx_.capturing, "Replay inside a recording");
    const auto it = recordings_.find({key.owner, key.bucket});
    if (it == recordings_.end()) return false;
    if (it->second.scratch_generation != ctx_.scratch.generation()) {
      // The scratch was reallocated since (a larger op ran eagerly): record again.
      SPECMOE_CUDA_CHECK(cudaGraphExecDestroy(it->second.exec));
      recordings_.erase(it);
      return false;
    }
    SPECMOE_CHECK(it->second.layout == LayoutOf(fwd_),
                  "Replay on a description whose counts differ from the recording's");
    SPECMOE_CUDA_CHECK(cudaGraphLaunch(it->second.exec, ctx_.stream));
    return true;
  }

  // Freed once a replay still in flight is done (cudaGraphExecDestroy's contract).
  void DropRecordings(uint64_t owner) override {
    SPECMOE_CHECK(!ctx_.capturing, "DropRecordings inside a recording");
    auto it = recordings_.lower_bound({owner, 0});
    while (it != recordings_.end() && it->first.first == owner) {
      SPECMOE_CUDA_CHECK(cudaGraphExecDestroy(it->second.exec));
      it = recordings_.erase(it);
    }
  }

 private:
  void MakeCurrent() { SPECMOE_CUDA_CHECK(cudaSetDevice(device_)); }

  void DiscardRecordings() {
    for (auto& [key, recording] : recordings_) {
      SPECMOE_CUDA_CHECK(cudaGraphExecDestroy(recording.exec));
    }
    recordings_.clear();
  }

  // Replaces the device description buffer by one of at least `bytes` (doubling); the
  // recordings point into the old one and are discarded. Aborts when even this small buffer
  // cannot be allocated.
  void GrowDescription(size_t bytes) {
    SPECMOE_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    DiscardRecordings();
    SPECMOE_CUDA_CHECK(cudaFree(desc_device_));
    desc_device_ = nullptr;
    const size_t capacity = std::max(bytes, 2 * desc_capacity_);
    SPECMOE_CUDA_CHECK(cudaMalloc(&desc_device_, capacity));
    desc_capacity_ = capacity;
  }

  const int device_;
  CudaContext ctx_;
  void* cublas_workspace_ = nullptr;   // [kCublasWorkspaceBytes] device
  std::unique_ptr<MoeExpertsOp> moe_;  // the fused experts (capturable)
  std::unordered_set<void*> uploads_;  // device memory of uploaded weights
  GrowingBuffer desc_host_{true};      // pinned: the packed description
  void* desc_device_ = nullptr;        // [desc_capacity_] device: the taken one
  size_t desc_capacity_ = 0;
  cudaEvent_t desc_copied_ = nullptr;     // the last description copy is done
  cudaEvent_t staging_copied_ = nullptr;  // KvCompact's slots left ctx.host_staging
  ForwardDesc fwd_;                       // counts + pointers into desc_device_
  // What decides where a description's arrays are: its counts and whether it has a tree.
  struct Layout {
    int n_tokens, n_seqs, max_blocks_per_seq, n_logit_rows;
    bool tree;
    bool operator==(const Layout& o) const {
      return n_tokens == o.n_tokens && n_seqs == o.n_seqs &&
             max_blocks_per_seq == o.max_blocks_per_seq && n_logit_rows == o.n_logit_rows &&
             tree == o.tree;
    }
  };
  static Layout LayoutOf(const ForwardDesc& d) {
    return Layout{d.n_tokens, d.n_seqs, d.max_blocks_per_seq, d.n_logit_rows,
                  d.tree_mask != nullptr};
  }
  struct Recording {
    cudaGraphExec_t exec;
    Layout layout;                // of the description it was recorded on
    uint64_t scratch_generation;  // of ctx_.scratch, whose memory its kernels use
  };
  // (owner, bucket) -> recording; ordered so that an owner's recordings are one range.
  std::map<std::pair<uint64_t, uint64_t>, Recording> recordings_;
  std::pair<uint64_t, uint64_t> recording_key_{0, 0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device) {
  auto backend = std::make_unique<CudaBackend>(device);
  if (absl::Status status = backend->Init(); !status.ok()) return status;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace specmoe::kernels::cuda
