// engine/serving/engine_stats.h — the engine's live gauges (queue, running set, KV blocks,
// prefix cache), written by the scheduler and read by the metrics from any thread.
#ifndef SPECMOE_ENGINE_SERVING_ENGINE_STATS_H_
#define SPECMOE_ENGINE_SERVING_ENGINE_STATS_H_

#include <atomic>
#include <cstdint>

namespace specmoe::engine {

// Live gauges: the worker thread stores them after every change, any thread loads them
// (relaxed atomics, so reading never waits on the step loop).
struct EngineStats {
  std::atomic<int> queue_depth{0};  // requests waiting to be admitted (not preempted ones)
  std::atomic<int> running{0};      // requests generating
  std::atomic<int> preempted{0};    // preempted requests waiting to resume
  std::atomic<int64_t> preemptions_total{0};  // preemptions since start
  std::atomic<int> kv_blocks_used{0};         // target KV cache blocks (the draft's mirror them)
  std::atomic<int> kv_blocks_free{0};         // free, or cached by the prefix cache and unheld
  // Prefix cache: prompt tokens looked up (at first admission) and supplied by the cache (the
  // sums of prompt_tokens and cached_prompt_tokens over admitted requests while it is on),
  // and cached blocks nobody holds.
  std::atomic<int64_t> prefix_cache_queries_total{0};
  std::atomic<int64_t> prefix_cache_hits_total{0};
  std::atomic<int> prefix_cache_blocks{0};
};

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_SERVING_ENGINE_STATS_H_
