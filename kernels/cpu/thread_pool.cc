// kernels/cpu/thread_pool.cc — see thread_pool.h.
#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace specmoe::kernels {
namespace {

using Clock = std::chrono::steady_clock;

// How long a worker polls for the next loop before it sleeps. Bounded by time, not by a
// count of pause instructions (a pause takes ~10 cycles on some cores and ~140 on others).
constexpr std::chrono::microseconds kSpin{250};
// Pauses between two clock reads while polling.
constexpr int kPausesPerClockRead = 32;

// Chunks per thread: threads take chunks from a shared counter, so a thread that is slowed
// (a busy or descheduled core) does not hold the others at the end of every loop.
constexpr int64_t kChunksPerThread = 16;
// Chunks of one loop: at most this many (16 bits of the shared word).
constexpr int64_t kMaxChunks = 0xFFFF;

// True on a thread that is currently running a loop body (nested loops run serially).
thread_local bool tls_in_parallel_for = false;

// MXCSR's control bits (the low 6 are sticky exception flags, which stay per thread).
constexpr uint32_t kFpControlMask = ~uint32_t{0x3F};

inline uint32_t FpControl() {
#if defined(__x86_64__) || defined(__i386__)
  return _mm_getcsr() & kFpControlMask;
#else
  return 0;
#endif
}

inline void SetFpControl(uint32_t control) {
#if defined(__x86_64__) || defined(__i386__)
  const uint32_t csr = _mm_getcsr();
  if ((csr & kFpControlMask) != control) _mm_setcsr((csr & ~kFpControlMask) | control);
#else
  (void)control;
#endif
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  // The chunk count of a loop must fit the 16 bits of the shared word.
  num_threads_ = std::clamp(num_threads, 1, static_cast<int>(kMaxChunks / kChunksPerThread));
  workers_.reserve(num_threads_ - 1);
  for (int part = 1; part < num_threads_; ++part) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true, std::memory_order_release);
    // A new generation with no chunks: every worker wakes, claims nothing and sees stop_.
    work_.store(uint64_t{++generation_} << 32, std::memory_order_seq_cst);
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::RunChunks(uint32_t generation) {
  for (;;) {
    uint64_t word = work_.load(std::memory_order_acquire);
    uint64_t chunk = 0;
    do {
      chunk = word & 0xFFFF;
      if (Generation(word) != generation || chunk >= ((word >> 16) & 0xFFFF)) return;
    } while (!work_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel,
                                          std::memory_order_acquire));
    // Claimed: this loop's fields stay as they are until its chunks are all done.
    SetFpControl(fp_control_);
    const int64_t begin = n_ * static_cast<int64_t>(chunk) / chunks_;
    const int64_t end = n_ * static_cast<int64_t>(chunk + 1) / chunks_;
    if (begin < end) body_(fn_, begin, end);
    done_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::WorkerLoop() {
  uint32_t seen = 0;
  for (;;) {
    uint32_t generation = Generation(work_.load(std::memory_order_acquire));
    if (generation == seen) {
      const Clock::time_point deadline = Clock::now() + kSpin;
      do {
        for (int i = 0; i < kPausesPerClockRead && generation == seen; ++i) {
          CpuRelax();
          generation = Generation(work_.load(std::memory_order_acquire));
        }
      } while (generation == seen && Clock::now() < deadline);
    }
    if (generation == seen) {
      // Sleep. sleepers_ and work_ are both seq_cst, so either the caller's new generation
      // comes first in their single order and the predicate sees it, or this increment does
      // and the caller sees a sleeper and takes mu_ before notifying (no lost wake-up).
      std::unique_lock<std::mutex> lock(mu_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      cv_.wait(lock, [&] { return Generation(work_.load(std::memory_order_seq_cst)) != seen; });
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
      generation = Generation(work_.load(std::memory_order_acquire));
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = generation;
    tls_in_parallel_for = true;
    RunChunks(generation);
    tls_in_parallel_for = false;
  }
}

void ThreadPool::Run(int64_t n, int64_t min_chunk, void* fn, Body body) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  const int64_t max_chunks = std::max<int64_t>(1, n / min_chunk);
  const int64_t chunks = std::min<int64_t>(num_threads_ * kChunksPerThread, max_chunks);
  if (chunks <= 1 || num_threads_ == 1 || tls_in_parallel_for) {
    body(fn, 0, n);
    return;
  }
  fn_ = fn;
  body_ = body;
  n_ = n;
  chunks_ = chunks;
  fp_control_ = FpControl();
  done_.store(0, std::memory_order_relaxed);
  const uint32_t generation = ++generation_;
  work_.store(uint64_t{generation} << 32 | static_cast<uint64_t>(chunks) << 16,
              std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    // A worker that counted itself as a sleeper holds mu_ until it waits, so taking mu_
    // here orders the notify after its wait.
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
  }
  tls_in_parallel_for = true;
  RunChunks(generation);
  tls_in_parallel_for = false;
  // Every chunk is claimed; wait for the ones other threads are still running. Spin, then
  // yield: on an oversubscribed machine that thread may be waiting for a core.
  for (int i = 0; done_.load(std::memory_order_acquire) != chunks; ++i) {
    if (i < 4096) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
  fn_ = nullptr;
}

}  // namespace specmoe::kernels
