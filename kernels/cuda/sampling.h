// kernels/cuda/sampling.h — the logits reductions on the device (kernels/backend.h
// ArgmaxRows, FindNonFinite, ProcessedDistribution, TopKIds), twins of kernels/cpu/sampling.cc
// with the same tie rules. Only their small results are copied back: the full
// [rows, vocab] block never leaves the device. Implemented in kernels/cuda/argmax_rows.cu,
// find_non_finite.cu, processed_distribution.cu, top_k_ids.cu; tested against the CPU backend
// by tests/cuda_sampling_test.cc (label cuda).
//
// Host arguments (RowPenalty contexts) are packed into ctx.host_staging and uploaded in one
// copy; results are read back through ctx.host_staging; each call synchronizes ctx.stream
// once, at its end, and writes its host outputs.
#ifndef SPECMOE_KERNELS_CUDA_SAMPLING_H_
#define SPECMOE_KERNELS_CUDA_SAMPLING_H_

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cuda/context.h"

namespace specmoe::kernels::cuda {

// logits: device [rows, vocab]; penalties: host [rows] or null; out: host [rows].
void ArgmaxRows(const float* logits, int rows, int vocab, const RowPenalty* penalties,
                int32_t* out, CudaContext& ctx);

// logits: device [rows, vocab]; out: host.
bool FindNonFinite(const float* logits, int rows, int vocab, NonFiniteValue* out,
                   CudaContext& ctx);

// logits: device [vocab]; probs: host [vocab].
void ProcessedDistribution(const float* logits, int vocab, const RowPenalty& penalty,
                           const LogitsProcessing& processing, float* probs, CudaContext& ctx);

// logits: device [vocab]; ids: host [min(k, vocab)].
void TopKIds(const float* logits, int vocab, int k, const RowPenalty& penalty, int32_t* ids,
             CudaContext& ctx);

}  // namespace specmoe::kernels::cuda

#endif  // SPECMOE_KERNELS_CUDA_SAMPLING_H_
