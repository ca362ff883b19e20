// tests/forward_batch_test.cc — the one validator of a forward's description
// (engine/model/forward_batch.h): a valid batch of a causal prefill and a token tree passes;
// each rule broken alone gives INVALID_ARGUMENT with its own message; the kernels-level view
// (Desc) drops the tree arrays when no token uses a mask; Model::Forward refuses a broken
// batch before any op runs. Label: cpu.
#include "engine/model/forward_batch.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/loader/model_config.h"
#include "engine/loader/weights.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace specmoe::engine {
namespace {

using ::testing::HasSubstr;

constexpr int kBlockSize = 4;
constexpr int kNumBlocks = 8;
constexpr int kMaxTokens = 16;

// Sequence 0: a causal prefill of 5 tokens in blocks {6, 1}. Sequence 1: 6 committed tokens
// in blocks {2, 0, 5}, then a tree root + 2 nodes at logical slots 6, 7, 8.
ForwardBatch ValidBatch() {
  ForwardBatch b;
  const SequenceBlocks s0{{6, 1}}, s1{{2, 0, 5}};
  for (int i = 0; i < 5; ++i) {
    b.Add(10 + i, i, s0.blocks[i / kBlockSize] * kBlockSize + i % kBlockSize, 0, i + 1, 0);
  }
  const uint64_t masks[] = {0b001, 0b011, 0b101};
  for (int j = 0; j < 3; ++j) {
    const int logical = 6 + j;
    b.Add(20 + j, 6 + (j > 0), s1.blocks[logical / kBlockSize] * kBlockSize + logical % kBlockSize,
          1, 6, masks[j]);
  }
  b.tree_start = {0, 6};
  b.SetBlockTables({&s0, &s1});
  b.logit_rows = {4, 5, 6, 7};
  return b;
}

absl::Status Check(const ForwardBatch& b) {
  return Validate(b, kMaxTokens, kBlockSize, kNumBlocks);
}

TEST(ForwardBatchTest, AValidBatchPassesAndPadsTablesWithNoBlock) {
  const ForwardBatch b = ValidBatch();
  EXPECT_TRUE(Check(b).ok()) << Check(b);
  EXPECT_EQ(b.n_seqs(), 2);
  EXPECT_EQ(b.max_blocks_per_seq, 3);
  EXPECT_EQ(b.block_tables, (std::vector<int32_t>{6, 1, ForwardBatch::kNoBlock, 2, 0, 5}));
  ForwardBatch empty;
  EXPECT_TRUE(Check(empty).ok());
}

TEST(ForwardBatchTest, DescViewsTheArraysAndDropsTreesWhenUnused) {
  ForwardBatch b = ValidBatch();
  kernels::ForwardDesc d = b.Desc();
  EXPECT_EQ(d.n_tokens, 8);
  EXPECT_EQ(d.n_seqs, 2);
  EXPECT_EQ(d.max_blocks_per_seq, 3);
  EXPECT_EQ(d.n_logit_rows, 4);
  EXPECT_EQ(d.tokens, b.tokens.data());
  EXPECT_EQ(d.slots, b.slots.data());
  EXPECT_EQ(d.tree_mask, b.tree_mask.data());
  EXPECT_EQ(d.tree_start, b.tree_start.data());
  for (uint64_t& m : b.tree_mask) m = 0;
  b.tree_start.clear();
  d = b.Desc();
  EXPECT_EQ(d.tree_mask, nullptr);
  EXPECT_EQ(d.tree_start, nullptr);
  EXPECT_TRUE(Check(b).ok()) << Check(b);
}

// A recorded forward's bucket (model.h PadForRecording): every array padded to a power of
// two with padding that writes and sees nothing, the real entries untouched, and one key
// per bucket whatever the batch inside it.
TEST(ForwardBatchTest, PaddingForARecordingKeepsTheBatchAndKeysTheBucket) {
  const ForwardBatch b = ValidBatch();  // 8 tokens, 2 sequences x 3 blocks, 4 logit rows
  ForwardBatch p;
  const uint64_t key = PadForRecording(b, kMaxTokens, 7, &p);
  EXPECT_EQ(p.n_tokens(), 8);
  EXPECT_EQ(p.n_seqs(), 2);
  EXPECT_EQ(p.max_blocks_per_seq, 4);
  EXPECT_EQ(p.block_tables, (std::vector<int32_t>{6, 1, -1, -1, 2, 0, 5, -1}));
  EXPECT_EQ(p.logit_rows, b.logit_rows);

  ForwardBatch c = b;
  c.Add(1, 9, 3, 1, 6, 0);  // a 9th token: the 16-token bucket
  c.logit_rows.push_back(8);
  ForwardBatch q;
  const uint64_t key16 = PadForRecording(c, kMaxTokens, 7, &q);
  EXPECT_NE(key16, key);
  ASSERT_EQ(q.n_tokens(), 16);
  EXPECT_TRUE(std::equal(c.tokens.begin(), c.tokens.end(), q.tokens.begin()));
  EXPECT_TRUE(std::equal(c.slots.begin(), c.slots.end(), q.slots.begin()));
  for (int t = 9; t < 16; ++t) {
    EXPECT_EQ(q.slots[t], -1) << t;
    EXPECT_EQ(q.visible_prefix[t], 0) << t;
    EXPECT_EQ(q.tree_mask[t], 0u) << t;
  }
  EXPECT_EQ(q.logit_rows, (std::vector<int32_t>{4, 5, 6, 7, 8, 8, 8, 8}));
  EXPECT_EQ(q.tree_start.size(), 2u);

  c.tokens[0] = 99;  // a different batch in the same bucket: the same key
  EXPECT_EQ(PadForRecording(c, kMaxTokens, 7, &q), key16);
  EXPECT_NE(PadForRecording(c, kMaxTokens, 8, &q), key16);  // another cache or model
  EXPECT_EQ(PadForRecording(c, 12, 7, &q), PadForRecording(c, 12, 7, &q));
  EXPECT_EQ(q.n_tokens(), 12);  // never beyond the model's max_tokens
  EXPECT_EQ(q.logit_rows.size(), 8u);
}

struct BadCase {
  std::string name;
  std::function<void(ForwardBatch&)> breaks;
  std::string error;  // a substring of the message
};

TEST(ForwardBatchTest, EachBrokenRuleGivesItsOwnError) {
  const std::vector<BadCase> cases = {
      {"too many tokens",
       [](ForwardBatch& b) {
         for (int i = 0; i < 9; ++i) b.Add(1, 0, 24, 0, 1, 0);
       },
       "more than max_tokens 16"},
      {"positions size", [](ForwardBatch& b) { b.positions.pop_back(); }, "positions has 7"},
      {"slots size", [](ForwardBatch& b) { b.slots.push_back(0); }, "slots has 9"},
      {"token_seq size", [](ForwardBatch& b) { b.token_seq.pop_back(); }, "token_seq has 7"},
      {"visible size", [](ForwardBatch& b) { b.visible_prefix.pop_back(); },
       "visible_prefix has 7"},
      {"tree_mask size", [](ForwardBatch& b) { b.tree_mask.pop_back(); }, "tree_mask has 7"},
      {"table size", [](ForwardBatch& b) { b.block_tables.pop_back(); },
       "not a multiple of max_blocks_per_seq"},
      {"no tables", [](ForwardBatch& b) { b.max_blocks_per_seq = 0; },
       "not a multiple of max_blocks_per_seq 0"},
      {"sequence out of range", [](ForwardBatch& b) { b.token_seq[2] = 2; },
       "token 2 has sequence 2, not in [0, 2)"},
      {"negative sequence", [](ForwardBatch& b) { b.token_seq[0] = -1; },
       "token 0 has sequence -1"},
      {"no tree_start", [](ForwardBatch& b) { b.tree_start.clear(); },
       "tree_start has 0 entries for 2 sequences"},
      {"negative tree_start", [](ForwardBatch& b) { b.tree_start[1] = -3; },
       "tree_start[1] = -3 is negative"},
      {"tree slot beyond the blocks", [](ForwardBatch& b) { b.tree_start[1] = 10; },
       "token 7 has visible tree slot 12, beyond the 12 slots of sequence 1"},
      {"tree bit beyond the blocks", [](ForwardBatch& b) { b.tree_mask[7] |= uint64_t{1} << 6; },
       "visible tree slot 12"},
      {"visible prefix beyond the blocks", [](ForwardBatch& b) { b.visible_prefix[4] = 9; },
       "token 4 has visible prefix 9, beyond the 8 slots of sequence 0"},
      {"negative visible prefix", [](ForwardBatch& b) { b.visible_prefix[1] = -1; },
       "token 1 has visible prefix -1"},
      {"negative position", [](ForwardBatch& b) { b.positions[3] = -2; },
       "token 3 has a negative position"},
      {"slot outside the cache", [](ForwardBatch& b) { b.slots[0] = 32; },
       "token 0 writes slot 32, outside the cache (32 slots)"},
      {"slot of another sequence", [](ForwardBatch& b) { b.slots[0] = 2 * kBlockSize; },
       "token 0 writes slot 8, not in a block of its sequence 0"},
      {"block id outside the cache", [](ForwardBatch& b) { b.block_tables[1] = 8; },
       "block_tables[0][1] = 8 is not a block of the cache"},
      {"block after an empty entry",
       [](ForwardBatch& b) {
         b.block_tables[1] = ForwardBatch::kNoBlock;
         b.block_tables[2] = 1;
       },
       "block_tables[0][2] follows an empty entry"},
      {"logit row out of range", [](ForwardBatch& b) { b.logit_rows.push_back(8); },
       "logit_rows[4] = 8 is not a token row"},
      {"negative logit row", [](ForwardBatch& b) { b.logit_rows[0] = -1; },
       "logit_rows[0] = -1"},
      {"logit rows repeated", [](ForwardBatch& b) { b.logit_rows[1] = 4; },
       "logit_rows are not strictly increasing at 1"},
      {"logit rows decreasing", [](ForwardBatch& b) { b.logit_rows = {5, 4}; },
       "not strictly increasing at 1"},
      {"logit rows without tokens", [](ForwardBatch& b) {
         const std::vector<int32_t> rows = {0};
         b.Clear();
         b.logit_rows = rows;
       },
       "logit_rows without tokens"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    ForwardBatch b = ValidBatch();
    c.breaks(b);
    const absl::Status s = Check(b);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.error));
  }
}

// The tree_start of a sequence whose tokens use no mask is not read, so it may be anything.
TEST(ForwardBatchTest, TreeStartOfAMasklessSequenceIsIgnored) {
  ForwardBatch b = ValidBatch();
  b.tree_start[0] = -100;
  EXPECT_TRUE(Check(b).ok()) << Check(b);
}

// Recorded forwards are keyed by ids, not addresses: a model and a cache destroyed
// and made again (typically at the same host addresses) get ids never seen before, so a
// recording made for the old ones can never be replayed for the new ones.
TEST(ForwardBatchTest, ModelsAndCachesMadeAgainGetNewRecordingIds) {
  const std::string dir = std::string(SPECMOE_FIXTURES) + "/models/llama_tiny";
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<ModelWeights> weights = BindModelWeights(*config, **store);
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend(1);
  std::vector<uint64_t> ids;
  for (int round = 0; round < 4; ++round) {
    absl::StatusOr<std::unique_ptr<Model>> model =
        Model::Create(*config, *weights, backend.get(), kMaxTokens);
    ASSERT_TRUE(model.ok()) << model.status();
    absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(
        backend.get(), config->num_layers, (*model)->kv_row(), kBlockSize, kNumBlocks);
    ASSERT_TRUE(cache.ok()) << cache.status();
    ids.push_back((*model)->recording_id());
    ids.push_back((*cache)->recording_id());
    ForwardBatch b = ValidBatch();
    EXPECT_NE((*model)->Forward(b, **cache), nullptr);  // destroyed after a forward
  }
  for (uint64_t id : ids) EXPECT_NE(id, 0u);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
  EXPECT_NE(kernels::NewRecordingId(), kernels::NewRecordingId());
}

// Model::Forward validates first: a broken batch aborts with the validator's message, before
// any op reads out of bounds.
TEST(ForwardBatchDeathTest, ModelForwardRefusesABrokenBatch) {
  const std::string dir = std::string(SPECMOE_FIXTURES) + "/models/llama_tiny";
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<ModelWeights> weights = BindModelWeights(*config, **store);
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend(1);
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(*config, *weights, backend.get(), kMaxTokens);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(
      backend.get(), config->num_layers, (*model)->kv_row(), kBlockSize, kNumBlocks);
  ASSERT_TRUE(cache.ok()) << cache.status();
  ForwardBatch b = ValidBatch();
  EXPECT_NE((*model)->Forward(b, **cache), nullptr);
  b.logit_rows = {5, 4};
  EXPECT_DEATH((*model)->Forward(b, **cache), "logit_rows are not strictly increasing");
}

}  // namespace
}  // namespace specmoe::engine
