// engine/text/vocab_check.cc — see vocab_check.h.
#include "engine/text/vocab_check.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/escaping.h"

namespace specmoe::engine {

absl::Status CheckSameVocabulary(int target_vocab, int draft_vocab,
                                 const std::vector<std::string>* target_pieces,
                                 const std::vector<std::string>* draft_pieces) {
  if (target_vocab != draft_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "draft and target vocabularies differ: target vocab_size ", target_vocab,
        ", draft vocab_size ", draft_vocab));
  }
  if (target_pieces == nullptr || draft_pieces == nullptr) return absl::OkStatus();
  const size_t common = std::min(target_pieces->size(), draft_pieces->size());
  for (size_t id = 0; id < common; ++id) {
    if ((*target_pieces)[id] != (*draft_pieces)[id]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "draft and target tokenizers differ: first at token id ", id, ": target '",
          absl::CHexEscape((*target_pieces)[id]), "', draft '",
          absl::CHexEscape((*draft_pieces)[id]), "'"));
    }
  }
  if (target_pieces->size() != draft_pieces->size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "draft and target tokenizers differ: target's has ", target_pieces->size(),
        " pieces, draft's has ", draft_pieces->size()));
  }
  return absl::OkStatus();
}

}  // namespace specmoe::engine
