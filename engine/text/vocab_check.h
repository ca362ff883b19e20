// engine/text/vocab_check.h — the draft and the target must share one vocabulary (engine/README.md,
// Tokenizer).
//
// Compares vocab_size and, when both folders have a tokenizer (tokenizer.model or
// tokenizer.json, whichever each has), the pieces id by id.
// The configs' special-token ids are deliberately not compared (the seed MoE config says
// bos 0 / pad 1 while the LLaMA tokenizer has <s> = 1). Tested by tests/weights_test.cc.
#ifndef SPECMOE_ENGINE_TEXT_VOCAB_CHECK_H_
#define SPECMOE_ENGINE_TEXT_VOCAB_CHECK_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace specmoe::engine {

// OK when the vocabularies agree; otherwise InvalidArgument naming the sizes or the first
// differing token id and both pieces. A null `*_pieces` (no tokenizer in that folder) skips
// the piece comparison.
absl::Status CheckSameVocabulary(int target_vocab, int draft_vocab,
                                 const std::vector<std::string>* target_pieces,
                                 const std::vector<std::string>* draft_pieces);

}  // namespace specmoe::engine

#endif  // SPECMOE_ENGINE_TEXT_VOCAB_CHECK_H_
