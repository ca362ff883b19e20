// tests/event_collector.h — collects one engine request's events for the engine-level tests
// (engine_test, seeded_sampling_test, prompt_logprobs_test).
#ifndef SPECMOE_TESTS_EVENT_COLLECTOR_H_
#define SPECMOE_TESTS_EVENT_COLLECTOR_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "engine/serving/request.h"

namespace specmoe::engine {

// Contract: Sink() is called from the engine's worker thread, the accessors after Wait()
// from the test's thread; one collector per request.
class EventCollector {
 public:
  // `logprobs_wanted`: whether the request asked for per-token logprobs (each event must then
  // carry one entry per token, else none; mismatched_events() counts the others).
  explicit EventCollector(bool logprobs_wanted = false) : logprobs_wanted_(logprobs_wanted) {}

  EventSink Sink() {
    return [this](GenerationEvent event) {
      std::lock_guard<std::mutex> lock(mu_);
      if (event.logprobs.size() != (logprobs_wanted_ ? event.token_ids.size() : 0)) {
        ++mismatched_events_;
      }
      if (!event.token_ids.empty()) generated_ = true;
      // Every prompt entry arrives before the first generated token.
      if (generated_ && !event.prompt_logprobs.empty()) prompt_after_tokens_ = true;
      prompt_.insert(prompt_.end(), event.prompt_logprobs.begin(), event.prompt_logprobs.end());
      logprobs_.insert(logprobs_.end(), event.logprobs.begin(), event.logprobs.end());
      ids_.insert(ids_.end(), event.token_ids.begin(), event.token_ids.end());
      text_ += event.text;
      if (event.finished) {
        final_ = event;
        done_ = true;
      } else {
        ++events_before_final_;
      }
      cv_.notify_all();
    };
  }
  // Returns once the final event arrived.
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
  }

  const std::vector<int32_t>& ids() const { return ids_; }
  const std::string& text() const { return text_; }
  const std::vector<TokenLogprob>& logprobs() const { return logprobs_; }
  const std::vector<TokenLogprob>& prompt() const { return prompt_; }
  const GenerationEvent& final_event() const { return final_; }
  int events_before_final() const { return events_before_final_; }
  int mismatched_events() const { return mismatched_events_; }
  bool prompt_after_tokens() const { return prompt_after_tokens_; }

 private:
  const bool logprobs_wanted_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  bool generated_ = false;
  bool prompt_after_tokens_ = false;
  int events_before_final_ = 0;
  int mismatched_events_ = 0;
  std::vector<int32_t> ids_;
  std::vector<TokenLogprob> logprobs_;
  std::vector<TokenLogprob> prompt_;
  std::string text_;
  GenerationEvent final_;
};

}  // namespace specmoe::engine

#endif  // SPECMOE_TESTS_EVENT_COLLECTOR_H_
