// engine/text/stop_matcher.cc — stop strings over streamed text (see stop_matcher.h).
#include "engine/text/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace specmoe::engine {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

StopMatcher::Result StopMatcher::Push(std::string_view delta) {
  Result result;
  if (stopped_) {
    result.stopped = true;
    return result;
  }
  pending_.append(delta);

  // A complete stop string: the one ending first, then the one starting first. Every
  // match starts inside pending_ (text already emitted could not start one, see below),
  // and std::string::find gives each string's earliest occurrence.
  size_t best_start = std::string::npos;
  size_t best_end = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t start = pending_.find(s);
    if (start == std::string::npos) continue;
    const size_t end = start + s.size();
    if (end < best_end || (end == best_end && start < best_start)) {
      best_start = start;
      best_end = end;
    }
  }
  if (best_start != std::string::npos) {
    result.emit = pending_.substr(0, best_start);
    result.stopped = true;
    stopped_ = true;
    pending_.clear();
    return result;
  }

  // No stop string yet: hold back the longest suffix of pending_ that is a proper prefix
  // of a stop string (it may still complete); emit everything before it.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(pending_.size(), s.size() - 1); len > hold; --len) {
      if (std::string_view(pending_).substr(pending_.size() - len) ==
          std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  result.emit = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return result;
}

std::string StopMatcher::Flush() {
  std::string rest = std::move(pending_);
  pending_.clear();
  return rest;
}

}  // namespace specmoe::engine
