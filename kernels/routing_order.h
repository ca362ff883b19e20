// kernels/routing_order.h — the order in which MoE routing ranks experts (Backend::TopKSoftmax),
// shared by the CPU backend (kernels/cpu/cpu_backend.cc) and the CUDA kernel
// (kernels/cuda/top_k_softmax.cu) so that both pick the same k experts for every row,
// NaN included.
//
// Expert a (gate logit la) comes before expert b (lb) when la > lb, or la == lb and a < b; a
// NaN logit ranks after every number (and NaNs among themselves by index). This is a strict
// total order on (logit, index) pairs, so the k first experts of a row are always k DISTINCT
// experts, whatever the row holds (a NaN row still routes to k different experts; its
// weights are NaN and the engine's non-finite check reports it). Tested on the CPU by
// tests/cpu_backend_test.cc and against the CPU on a GPU by tests/cuda_moe_test.cc.
#ifndef SPECMOE_KERNELS_ROUTING_ORDER_H_
#define SPECMOE_KERNELS_ROUTING_ORDER_H_

#if defined(__CUDACC__)
#define SPECMOE_HOST_DEVICE __host__ __device__
#else
#define SPECMOE_HOST_DEVICE
#endif

namespace specmoe::kernels {

// True when expert a (logit la) is ranked before expert b (logit lb); see above.
SPECMOE_HOST_DEVICE inline bool ExpertBefore(float la, int a, float lb, int b) {
  const bool a_nan = la != la;
  const bool b_nan = lb != lb;
  if (a_nan || b_nan) return a_nan == b_nan ? a < b : b_nan;
  return la > lb || (la == lb && a < b);
}

}  // namespace specmoe::kernels

#undef SPECMOE_HOST_DEVICE

#endif  // SPECMOE_KERNELS_ROUTING_ORDER_H_
