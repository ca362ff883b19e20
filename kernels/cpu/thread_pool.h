// kernels/cpu/thread_pool.h — a fixed set of worker threads for data-parallel loops.
//
// ParallelFor splits [0, n) into up to 4 contiguous chunks per thread, which the calling
// thread and the workers take from a shared counter (a slowed core does not hold up the
// loop), and returns when all are done. Workers
// spin briefly after each loop (decode issues many small ops back to back) and then sleep
// on a condition variable, so an idle pool costs no CPU. Used by the CPU backend for matmul
// (over output rows), attention (over (token, head) pairs) and large element-wise ops.
// Tested through tests/cpu_backend_test.cc (every op runs on a 2-thread pool).
#ifndef SPECMOE_KERNELS_CPU_THREAD_POOL_H_
#define SPECMOE_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace specmoe::kernels {

// Owns num_threads - 1 worker threads (the caller is the last one). ParallelFor may be
// called from one thread at a time; a ParallelFor issued from inside the body of a loop
// that was split over several threads runs serially on the calling thread.
// Cost of an empty loop: a few microseconds.
class ThreadPool {
 public:
  // num_threads <= 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) over disjoint contiguous ranges covering [0, n), possibly on
  // different threads. Each range has at least min_chunk items (except when n < min_chunk),
  // so small loops stay on one thread. The split depends only on n, min_chunk and
  // num_threads(); which thread runs a range does not.
  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                   int64_t min_chunk = 1);

 private:
  void WorkerLoop();
  void RunChunks();

  int num_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // The current loop; written by the caller before generation_ is bumped.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
};

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_THREAD_POOL_H_
