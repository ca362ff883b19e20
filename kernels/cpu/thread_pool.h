// kernels/cpu/thread_pool.h — a persistent team of worker threads for data-parallel loops.
//
// The workers stay with the caller between loops: after each loop they poll the shared word
// below for a bounded time (about 250 microseconds; decode issues ~40 parallel ops per token
// back to back), so handing the next op to the team costs an atomic store, no lock and no
// system call. Only a worker that has polled past that bound sleeps on a condition
// variable, and only then does the caller take the lock to wake it: an idle server burns no
// CPU. ParallelFor splits [0, n) into up to 16 contiguous chunks per thread, which the calling
// thread and the workers claim from one shared word (the loop's generation, its chunk count
// and the next chunk), and returns when every chunk is done. It waits for chunks, not for
// workers: a worker that is descheduled (a shared machine) or still polling when the loop
// runs out of chunks claims nothing and holds nobody up, so the caller finishes the loop
// alone instead of waiting a scheduler time slice at every op's barrier. Used by the CPU backend
// for matmul (over output rows), attention (over (token, head) pairs) and large element-wise ops.
// Every worker runs a loop under the caller's floating-point control state (x86 MXCSR), so
// a chunk's results do not depend on the thread that runs it.
// Tested through tests/cpu_backend_test.cc (every op runs on a 2-thread pool).
#ifndef SPECMOE_KERNELS_CPU_THREAD_POOL_H_
#define SPECMOE_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace specmoe::kernels {

// Owns num_threads - 1 worker threads (the caller is the last one). ParallelFor may be
// called from one thread at a time; a ParallelFor issued from inside the body of a loop
// that was split over several threads runs serially on the calling thread.
// Cost of an empty loop while the team is polling: well under a microsecond.
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
  // num_threads(); which thread runs a range does not. fn is called in place (no copy, no
  // allocation).
  template <typename Fn>
  void ParallelFor(int64_t n, Fn&& fn, int64_t min_chunk = 1) {
    using F = std::remove_reference_t<Fn>;
    Run(n, min_chunk, const_cast<void*>(static_cast<const void*>(&fn)),
        [](void* f, int64_t begin, int64_t end) { (*static_cast<F*>(f))(begin, end); });
  }

 private:
  using Body = void (*)(void*, int64_t, int64_t);

  void Run(int64_t n, int64_t min_chunk, void* fn, Body body);
  void WorkerLoop();
  // Claims and runs chunks of the loop of generation `generation` until none is left.
  void RunChunks(uint32_t generation);

  // The shared word: generation (bits 63..32), chunk count (31..16), next chunk (15..0).
  static constexpr uint32_t Generation(uint64_t word) { return static_cast<uint32_t>(word >> 32); }

  int num_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  // The current loop, written by the caller before it publishes a new generation in work_
  // (release). A thread reads them only after it claimed a chunk of that generation, and
  // the caller rewrites them only after every chunk is done, so they are never raced.
  void* fn_ = nullptr;
  Body body_ = nullptr;
  int64_t n_ = 0;
  int64_t chunks_ = 0;
  uint32_t generation_ = 0;  // the caller's last generation
  // The caller's MXCSR control bits (rounding, flush-to-zero, denormals-are-zero), which
  // every worker takes before it runs a chunk: the same float arithmetic on every thread.
  uint32_t fp_control_ = 0;
  // Each hot counter on its own cache line: workers poll work_ and claim chunks from it,
  // the caller polls done_.
  alignas(64) std::atomic<uint64_t> work_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace specmoe::kernels

#endif  // SPECMOE_KERNELS_CPU_THREAD_POOL_H_
