// tests/prefix_cache_test.cc — automatic prefix caching (engine/serving/prefix_cache.h).
//
// The block table alone, on real KV pools: what is found, pairs of target and draft blocks,
// eviction order, and a property test over random streams of admissions, growth and
// releases that writes every computed slot's K row from its whole prefix and checks, after
// every operation, that every held block still holds its prefix's values and that the
// reference counts and the LRU add up. Then the scheduler on the e2e models: with the cache
// on, every request's tokens and text equal the cache off, byte for byte, for hits of every
// length, speculation on and off, greedy and seeded, batched, preempted and multi-turn; the
// metrics equal the sums over responses; every block is free or cached at the end.
#include "engine/serving/prefix_cache.h"

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/serving/engine_options.h"
#include "engine/serving/model_set.h"
#include "engine/serving/request_validator.h"
#include "engine/serving/scheduler.h"
#include "engine/serving/sequence.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/scheduler_driver.h"

namespace specmoe::engine {
namespace {

const std::string kFixtures = SPECMOE_FIXTURES;

// --- the block table on real pools ---

constexpr int kBlock = 4;

struct Pools {
  explicit Pools(int blocks, bool with_draft = true) : backend(kernels::CreateCpuBackend(1)) {
    target = *KvCache::Create(backend.get(), 1, 1, kBlock, blocks);
    if (with_draft) draft = *KvCache::Create(backend.get(), 1, 1, kBlock, blocks);
  }
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<KvCache> target;
  std::unique_ptr<KvCache> draft;
};

std::vector<int32_t> Range(int from, int to) {
  std::vector<int32_t> v;
  for (int i = from; i < to; ++i) v.push_back(i);
  return v;
}

TEST(PrefixCacheTest, FindsWholeCommittedBlocksOnly) {
  Pools pools(8);
  PrefixCache cache(pools.target.get(), pools.draft.get(), true, 7);
  const std::vector<int32_t> tokens = Range(100, 111);  // 11 tokens: 2 full blocks + 3
  SequenceBlocks t;
  PrefixChain chain;
  ASSERT_TRUE(cache.Reserve(false, t, 11).ok());
  cache.Insert(tokens, 11, t, 0, nullptr, chain);
  EXPECT_EQ(cache.entries(), 2);
  EXPECT_EQ(cache.Lookup(tokens, 10, false).tokens, 8);
  EXPECT_EQ(cache.Lookup(tokens, 8, false).tokens, 8);  // an exact block boundary
  EXPECT_EQ(cache.Lookup(tokens, 7, false).tokens, 4);
  EXPECT_EQ(cache.Lookup(tokens, 3, false).tokens, 0);
  std::vector<int32_t> other = tokens;
  other[5] = 1;  // differs within the second block
  EXPECT_EQ(cache.Lookup(other, 10, false).tokens, 4);
  other[0] = 1;
  EXPECT_EQ(cache.Lookup(other, 10, false).tokens, 0);
  // No draft block was offered: a speculating request finds nothing.
  EXPECT_EQ(cache.Lookup(tokens, 10, true).tokens, 0);
  // The same tokens under another seed (another model pair or KV dtype) are not found.
  PrefixCache other_pair(pools.target.get(), pools.draft.get(), true, 8);
  EXPECT_EQ(other_pair.Lookup(tokens, 10, false).tokens, 0);
  EXPECT_EQ(cache.Lookup(tokens, 10, false).revived, 0);  // still held
  cache.Release(t, nullptr, chain);
  EXPECT_EQ(cache.cached_blocks(), 2);
  EXPECT_EQ(pools.target->free_blocks(), 6);
  EXPECT_EQ(cache.available_blocks(), 8);
  EXPECT_EQ(cache.Lookup(tokens, 10, false).revived, 2);
  EXPECT_TRUE(cache.CheckInvariants({}, {}).ok()) << cache.CheckInvariants({}, {});
}

TEST(PrefixCacheTest, TargetAndDraftBlocksArePairs) {
  Pools pools(8);
  PrefixCache cache(pools.target.get(), pools.draft.get(), true, 7);
  const std::vector<int32_t> tokens = Range(0, 13);
  SequenceBlocks t, d;
  PrefixChain chain;
  ASSERT_TRUE(cache.Reserve(false, t, 13).ok());
  ASSERT_TRUE(cache.Reserve(true, d, 13).ok());
  // The draft lags (its catch-up is pending): only its first block joins.
  cache.Insert(tokens, 12, t, 5, &d, chain);
  EXPECT_EQ(cache.Lookup(tokens, 12, false).tokens, 12);
  EXPECT_EQ(cache.Lookup(tokens, 12, true).tokens, 4);
  cache.Insert(tokens, 12, t, 12, &d, chain);
  EXPECT_EQ(cache.Lookup(tokens, 12, true).tokens, 12);
  // A second speculating sequence takes both halves of all three pairs.
  const PrefixCache::Hit hit = cache.Lookup(tokens, 12, true);
  SequenceBlocks t2, d2;
  PrefixChain chain2;
  cache.Acquire(hit, t2, &d2, chain2);
  EXPECT_EQ(t2.blocks, std::vector<int32_t>(t.blocks.begin(), t.blocks.begin() + 3));
  EXPECT_EQ(d2.blocks, std::vector<int32_t>(d.blocks.begin(), d.blocks.begin() + 3));
  const SequenceBlocks* held_t[] = {&t, &t2};
  const SequenceBlocks* held_d[] = {&d, &d2};
  EXPECT_TRUE(cache.CheckInvariants(held_t, held_d).ok()) << cache.CheckInvariants(held_t, held_d);
  cache.Release(t, &d, chain);
  cache.Release(t2, &d2, chain2);
  EXPECT_EQ(cache.cached_blocks(), 3);
  EXPECT_EQ(pools.target->free_blocks(), 5);
  EXPECT_EQ(pools.draft->free_blocks(), 5);
  EXPECT_TRUE(cache.CheckInvariants({}, {}).ok()) << cache.CheckInvariants({}, {});
}

TEST(PrefixCacheTest, EvictsTheLeastRecentTailFirstAndNeverAHeldBlock) {
  Pools pools(6);
  PrefixCache cache(pools.target.get(), pools.draft.get(), true, 7);
  const std::vector<int32_t> a = Range(0, 9), b = Range(50, 59);
  SequenceBlocks ta, tb;
  PrefixChain ca, cb;
  ASSERT_TRUE(cache.Reserve(false, ta, 9).ok());
  ASSERT_TRUE(cache.Reserve(false, tb, 9).ok());
  cache.Insert(a, 8, ta, 0, nullptr, ca);
  cache.Insert(b, 8, tb, 0, nullptr, cb);
  cache.Release(tb, nullptr, cb);  // b's two blocks cached, a's held
  ASSERT_EQ(pools.target->free_blocks(), 1);
  EXPECT_EQ(cache.available_blocks(), 3);
  // Asking for more than free + cached fails and evicts nothing.
  SequenceBlocks big;
  EXPECT_EQ(cache.Reserve(false, big, 4 * kBlock).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(big.blocks.empty());
  EXPECT_EQ(cache.Lookup(b, 8, false).tokens, 8);
  // Two blocks: the free one and b's tail.
  SequenceBlocks c;
  ASSERT_TRUE(cache.Reserve(false, c, 2 * kBlock).ok());
  EXPECT_EQ(cache.Lookup(b, 8, false).tokens, 4);
  EXPECT_EQ(cache.Lookup(a, 8, false).tokens, 8);  // held: never evicted
  ASSERT_TRUE(cache.Reserve(false, c, 3 * kBlock).ok());
  EXPECT_EQ(cache.Lookup(b, 8, false).tokens, 0);
  EXPECT_EQ(cache.evictions(), 2);
  EXPECT_EQ(cache.Reserve(false, c, 4 * kBlock).code(), absl::StatusCode::kResourceExhausted);
  const SequenceBlocks* held[] = {&ta, &c};
  EXPECT_TRUE(cache.CheckInvariants(held, {}).ok()) << cache.CheckInvariants(held, {});
  cache.Release(ta, nullptr, ca);
  PrefixChain none;
  cache.Release(c, nullptr, none);
  EXPECT_EQ(pools.target->free_blocks() + cache.cached_blocks(), 6);
}

TEST(PrefixCacheTest, APrefillingSequenceExtendsWithWhatAnotherHasCachedSince) {
  Pools pools(12);
  PrefixCache cache(pools.target.get(), pools.draft.get(), true, 7);
  const std::vector<int32_t> tokens = Range(0, 20);
  // Both admitted with nothing cached; the first prefills 8 tokens, then 8 more.
  SequenceBlocks t1, d1, t2, d2;
  PrefixChain c1, c2;
  ASSERT_TRUE(cache.Reserve(false, t1, 8).ok());
  ASSERT_TRUE(cache.Reserve(true, d1, 8).ok());
  cache.Insert(tokens, 8, t1, 8, &d1, c1);
  EXPECT_EQ(cache.Extend(tokens, 19, t2, &d2, c2), 8);
  ASSERT_TRUE(cache.Reserve(false, t1, 16).ok());
  ASSERT_TRUE(cache.Reserve(true, d1, 16).ok());
  cache.Insert(tokens, 16, t1, 16, &d1, c1);
  EXPECT_EQ(cache.Extend(tokens, 19, t2, &d2, c2), 8);
  EXPECT_EQ(t2.blocks, t1.blocks);
  EXPECT_EQ(d2.blocks, d1.blocks);
  EXPECT_EQ(cache.Extend(tokens, 19, t2, &d2, c2), 0);  // nothing more cached
  // Holding a partial block of its own, a sequence takes nothing.
  ASSERT_TRUE(cache.Reserve(false, t2, 18).ok());
  ASSERT_TRUE(cache.Reserve(true, d2, 18).ok());
  SequenceBlocks t3, d3;
  PrefixChain c3;
  ASSERT_TRUE(cache.Reserve(false, t3, 2).ok());
  ASSERT_TRUE(cache.Reserve(true, d3, 2).ok());
  EXPECT_EQ(cache.Extend(tokens, 19, t3, &d3, c3), 0);
  const SequenceBlocks* held_t[] = {&t1, &t2, &t3};
  const SequenceBlocks* held_d[] = {&d1, &d2, &d3};
  EXPECT_TRUE(cache.CheckInvariants(held_t, held_d).ok()) << cache.CheckInvariants(held_t, held_d);
  cache.Release(t1, &d1, c1);
  cache.Release(t2, &d2, c2);
  cache.Release(t3, &d3, c3);
  EXPECT_TRUE(cache.CheckInvariants({}, {}).ok()) << cache.CheckInvariants({}, {});
  EXPECT_EQ(pools.target->free_blocks() + cache.cached_blocks(), 12);
}

TEST(PrefixCacheTest, DisabledItIsThePlainAllocator) {
  Pools pools(4);
  PrefixCache cache(pools.target.get(), pools.draft.get(), false, 7);
  const std::vector<int32_t> tokens = Range(0, 9);
  SequenceBlocks t;
  PrefixChain chain;
  ASSERT_TRUE(cache.Reserve(false, t, 9).ok());
  cache.Insert(tokens, 9, t, 0, nullptr, chain);
  EXPECT_EQ(cache.entries(), 0);
  EXPECT_EQ(cache.Lookup(tokens, 8, false).tokens, 0);
  cache.Release(t, nullptr, chain);
  EXPECT_EQ(pools.target->free_blocks(), 4);
  EXPECT_EQ(cache.cached_blocks(), 0);
}

// The K value a slot holds when its token at `pos` was computed after tokens[0, pos]: a
// function of the whole prefix, as real K/V is.
float PrefixValue(const std::vector<int32_t>& tokens, int pos) {
  uint32_t h = 17;
  for (int i = 0; i <= pos; ++i) h = (h * 31 + static_cast<uint32_t>(tokens[i])) & 0xFFFFF;
  return static_cast<float>(h);
}

struct Sim {
  std::vector<int32_t> tokens;
  bool spec = false;
  int target_len = 0;
  int draft_len = 0;
  SequenceBlocks t, d;
  PrefixChain chain;
};

void Write(kernels::Backend& backend, KvCache& cache, const SequenceBlocks& blocks,
           const std::vector<int32_t>& tokens, int from, int to) {
  for (int p = from; p < to; ++p) {
    const float v = PrefixValue(tokens, p);
    backend.CopyFromHost(static_cast<float*>(cache.k(0)) + cache.PhysicalSlot(blocks, p), &v,
                         sizeof(v));
  }
}

// Every committed slot of every live sequence holds its prefix's value: a block shared
// by mistake, or evicted and reused while held, would break it.
void ExpectIntact(kernels::Backend& backend, KvCache& cache, const SequenceBlocks& blocks,
                  const std::vector<int32_t>& tokens, int len, const std::string& what) {
  for (int p = 0; p < len; ++p) {
    float v = 0;
    backend.CopyToHost(&v, static_cast<const float*>(cache.k(0)) + cache.PhysicalSlot(blocks, p),
                       sizeof(v));
    ASSERT_EQ(v, PrefixValue(tokens, p)) << what << " slot " << p;
  }
}

TEST(PrefixCacheTest, RandomStreamsKeepEveryHeldBlockIntactAndTheCountsRight) {
  std::mt19937 rng(12345);
  for (int round = 0; round < 20; ++round) {
    Pools pools(10 + round % 7);
    PrefixCache cache(pools.target.get(), pools.draft.get(), true, round);
    std::vector<std::unique_ptr<Sim>> live;
    int hits = 0;
    for (int op = 0; op < 400; ++op) {
      const int kind = static_cast<int>(rng() % 4);
      if (kind == 0 && live.size() < 5) {  // admit: one of four prefixes, then its own tail
        auto s = std::make_unique<Sim>();
        const int prefix = static_cast<int>(rng() % 4);
        const int len = 1 + static_cast<int>(rng() % 14);
        for (int i = 0; i < len; ++i) {
          s->tokens.push_back(i < 10 ? prefix * 3 + (i % 3) : static_cast<int32_t>(rng() % 5));
        }
        s->spec = rng() % 2 == 0;
        const int limit = len - 1;
        const PrefixCache::Hit hit = cache.Lookup(s->tokens, limit, s->spec);
        ASSERT_EQ(hit.tokens % kBlock, 0);
        ASSERT_LE(hit.tokens, limit);
        cache.Acquire(hit, s->t, s->spec ? &s->d : nullptr, s->chain);
        s->target_len = s->draft_len = hit.tokens;
        hits += hit.tokens;
        ExpectIntact(*pools.backend, *pools.target, s->t, s->tokens, hit.tokens, "hit target");
        if (s->spec) {
          ExpectIntact(*pools.backend, *pools.draft, s->d, s->tokens, hit.tokens, "hit draft");
        }
        live.push_back(std::move(s));
      } else if (kind <= 2 && !live.empty()) {  // compute some tokens (the draft may lag)
        Sim& s = *live[rng() % live.size()];
        if (rng() % 3 == 0) s.tokens.push_back(static_cast<int32_t>(rng() % 5));  // emitted
        if (rng() % 3 == 0 && (!s.spec || s.draft_len == s.target_len)) {
          // What others cached since, continuing this one's chain.
          const int added = cache.Extend(s.tokens, static_cast<int>(s.tokens.size()) - 1, s.t,
                                         s.spec ? &s.d : nullptr, s.chain);
          ASSERT_EQ(added % kBlock, 0);
          if (added > 0) ASSERT_EQ(s.target_len % kBlock, 0);
          s.target_len += added;
          s.draft_len += added;
          hits += added;
          ExpectIntact(*pools.backend, *pools.target, s.t, s.tokens, s.target_len, "extended");
          if (s.spec) {
            ExpectIntact(*pools.backend, *pools.draft, s.d, s.tokens, s.draft_len, "extended");
          }
        }
        const int to = std::min<int>(s.tokens.size(), s.target_len + 1 + rng() % 6);
        if (!cache.Reserve(false, s.t, to).ok()) continue;
        if (s.spec && !cache.Reserve(true, s.d, to).ok()) continue;
        Write(*pools.backend, *pools.target, s.t, s.tokens, s.target_len, to);
        s.target_len = to;
        if (s.spec) {
          const int draft_to = std::max(s.draft_len, to - static_cast<int>(rng() % 3));
          Write(*pools.backend, *pools.draft, s.d, s.tokens, s.draft_len, draft_to);
          s.draft_len = draft_to;
        }
        cache.Insert(s.tokens, s.target_len, s.t, s.draft_len, s.spec ? &s.d : nullptr, s.chain);
      } else if (!live.empty()) {  // finish, preempt or cancel: drop the references
        const size_t i = rng() % live.size();
        Sim& s = *live[i];
        cache.Release(s.t, &s.d, s.chain);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      }
      std::vector<const SequenceBlocks*> held_t, held_d;
      for (const auto& s : live) {
        ExpectIntact(*pools.backend, *pools.target, s->t, s->tokens, s->target_len, "target");
        if (s->spec) {
          ExpectIntact(*pools.backend, *pools.draft, s->d, s->tokens, s->draft_len, "draft");
        }
        held_t.push_back(&s->t);
        held_d.push_back(&s->d);
      }
      const absl::Status ok = cache.CheckInvariants(held_t, held_d);
      ASSERT_TRUE(ok.ok()) << "round " << round << " op " << op << ": " << ok;
    }
    for (auto& s : live) cache.Release(s->t, &s->d, s->chain);
    ASSERT_TRUE(cache.CheckInvariants({}, {}).ok());
    EXPECT_EQ(pools.target->free_blocks() + cache.cached_blocks(), pools.target->num_blocks());
    EXPECT_GT(hits, 0) << "round " << round << " should share prefixes";
  }
}

// --- the scheduler with the cache on and off ---

using Result = DriverResult;

// The scheduler with the prefix cache's invariants checked after every step.
class Driver : public SchedulerDriver {
 public:
  explicit Driver(EngineOptions options) : SchedulerDriver(std::move(options), true) {}
};

EngineOptions Options(bool prefix_cache, int kv_cache_tokens = 0) {
  EngineOptions options;
  options.target_dir = kFixtures + "/models/e2e_target";
  options.draft_dir = kFixtures + "/models/e2e_draft";
  options.threads = 1;
  options.max_batch = 16;
  options.max_step_tokens = 64;
  options.kv_cache_tokens = kv_cache_tokens;
  // Sampled requests' trees would otherwise follow the load (see scheduler_test.cc).
  options.tree_policy = EngineOptions::TreePolicy::kStatic;
  options.prefix_cache = prefix_cache;
  return options;
}

// A prompt of `n` token ids: BOS, then a fixed pseudo-random stream chosen by `stream`.
std::vector<int32_t> Prompt(int n, int stream, const Tokenizer& tokenizer) {
  std::vector<int32_t> ids = tokenizer.Encode("", true);
  std::mt19937 rng(static_cast<uint32_t>(stream));
  while (static_cast<int>(ids.size()) < n) ids.push_back(3 + static_cast<int32_t>(rng() % 200));
  ids.resize(n);
  return ids;
}

// Variant v of a request: greedy or seeded, speculating or not.
GenerationRequest Request(std::vector<int32_t> prompt, int v, int max_tokens = 20) {
  GenerationRequest r;
  r.request_id = "v" + std::to_string(v);
  r.prompt_ids = std::move(prompt);
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.speculation.disable = v % 2 == 1;
  r.speculation.expansion = {1, 2, 1};
  if (v / 2 % 2 == 1) {
    r.sampling.temperature = 0.9f;
    r.sampling.top_k = 30;
    r.sampling.seed = 7 + v;
  }
  return r;
}

void ExpectSame(const Result& cached, const Result& plain, const std::string& what) {
  ASSERT_TRUE(cached.finished) << what;
  ASSERT_TRUE(plain.finished) << what;
  EXPECT_TRUE(cached.status.ok()) << what << ": " << cached.status;
  EXPECT_EQ(cached.ids, plain.ids) << what;
  EXPECT_EQ(cached.text, plain.text) << what;
  EXPECT_EQ(cached.finish, plain.finish) << what;
  EXPECT_EQ(cached.speculation.verify_steps, plain.speculation.verify_steps) << what;
  EXPECT_EQ(cached.speculation.accepted_tokens, plain.speculation.accepted_tokens) << what;
  EXPECT_EQ(plain.cached_prompt_tokens, 0) << what;
}

TEST(PrefixCacheSchedulerTest, HitsOfEveryLengthAreBitExact) {
  Driver on(Options(true));
  Driver off(Options(false));
  const std::vector<int32_t> base = Prompt(70, 1, on.tokenizer());
  // The first request caches the base's blocks (in both caches: it speculates).
  const Result first = on.Alone(Request(base, 0));
  ExpectSame(first, off.Alone(Request(base, 0)), "first");
  EXPECT_EQ(first.cached_prompt_tokens, 0);
  // shared: tokens shared with the base; len: the probe's length. Expected hit: whole
  // blocks of the shared part, leaving the last prompt token to compute.
  struct Probe {
    int shared, len;
  };
  const Probe probes[] = {
      {0, 30},   // nothing shared
      {9, 30},   // within the first block: no hit
      {16, 30},  // exactly one block
      {40, 50},  // two blocks and a half
      {64, 64},  // the whole prompt, a block boundary: the last block is computed
      {65, 65},  // the whole prompt but its last token
      {70, 75},  // all of the base's prompt and more
  };
  int tag = 100;
  for (const Probe& probe : probes) {
    std::vector<int32_t> prompt(base.begin(), base.begin() + probe.shared);
    const std::vector<int32_t> tail = Prompt(probe.len, tag++, on.tokenizer());
    for (int i = probe.shared; i < probe.len; ++i) {
      prompt.push_back(tail[i] != base[i] ? tail[i] : base[i] + 1);  // diverges at `shared`
    }
    const int expected = std::min(probe.shared, probe.len - 1) / kKvBlockSize * kKvBlockSize;
    for (int v = 0; v < 4; ++v) {
      const std::string what = "shared " + std::to_string(probe.shared) + " of " +
                               std::to_string(probe.len) + ", variant " + std::to_string(v);
      const Result cached = on.Alone(Request(prompt, v));
      ExpectSame(cached, off.Alone(Request(prompt, v)), what);
      // Variants after the first also find the first's blocks past the shared part.
      if (v == 0) {
        EXPECT_EQ(cached.cached_prompt_tokens, expected) << what;
      } else {
        EXPECT_EQ(cached.cached_prompt_tokens, (probe.len - 1) / kKvBlockSize * kKvBlockSize)
            << what;
      }
    }
  }
  on.ExpectAllReturned();
  EXPECT_EQ(off.stats().prefix_cache_queries_total.load(), 0);
  EXPECT_EQ(off.scheduler().prefix_cache().cached_blocks(), 0);
}

TEST(PrefixCacheSchedulerTest, RequestsAdmittedTogetherShareWhatTheFirstPrefills) {
  Driver on(Options(true));
  Driver off(Options(false));
  const std::vector<int32_t> system = Prompt(200, 7, on.tokenizer());
  std::vector<Result> results(4);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> prompt = system;
    const std::vector<int32_t> tail = Prompt(9, 70 + i, on.tokenizer());
    prompt.insert(prompt.end(), tail.begin() + 1, tail.end());
    requests.push_back(Request(prompt, i));
    on.Add(requests.back(), &results[i]);
  }
  int prefill_tokens = 0;
  while (on.scheduler().has_work()) prefill_tokens += on.Step().prefill_tokens;
  // The 64-token steps prefill the first request's chunks; the others take each chunk's
  // whole blocks from the cache instead of computing them again.
  EXPECT_EQ(results[0].cached_prompt_tokens, 0);
  for (int i = 1; i < 4; ++i) {
    EXPECT_EQ(results[i].cached_prompt_tokens, 192) << i;  // 12 blocks of the 200
    ExpectSame(results[i], off.Alone(requests[i]), "request " + std::to_string(i));
  }
  ExpectSame(results[0], off.Alone(requests[0]), "request 0");
  EXPECT_EQ(prefill_tokens, 4 * 207 - 3 * 192);
  EXPECT_EQ(on.stats().prefix_cache_hits_total.load(), 3 * 192);
  on.ExpectAllReturned();
}

TEST(PrefixCacheSchedulerTest, MultiTurnContinuationsHitTheirHistory) {
  Driver on(Options(true));
  Driver off(Options(false));
  for (int v = 0; v < 4; ++v) {
    std::vector<int32_t> history = Prompt(23, 40 + v, on.tokenizer());
    for (int turn = 0; turn < 3; ++turn) {
      const std::string what = "variant " + std::to_string(v) + " turn " + std::to_string(turn);
      const Result cached = on.Alone(Request(history, v, 18));
      const Result plain = off.Alone(Request(history, v, 18));
      ExpectSame(cached, plain, what);
      if (turn > 0) {
        // The previous turn's prompt and reply are cached (but for a block the draft may
        // not have caught up on, and the partial last one).
        EXPECT_GE(
            cached.cached_prompt_tokens,
            (static_cast<int>(history.size()) - 1) / kKvBlockSize * kKvBlockSize - 2 * kKvBlockSize)
            << what;
      }
      history.insert(history.end(), cached.ids.begin(), cached.ids.end());
      const std::vector<int32_t> user = Prompt(6, 90 + turn, on.tokenizer());
      history.insert(history.end(), user.begin() + 1, user.end());
    }
  }
  on.ExpectAllReturned();
}

// Requests sharing one of three system prompts, submitted in two halves or staggered, with a KV
// budget small enough to preempt, and some cancelled: the rest equal the cache off with ample room.
void RunSharedStream(uint32_t seed, int kv_tokens, bool stagger) {
  Driver on(Options(true, kv_tokens));
  Driver off(Options(false));
  std::mt19937 rng(seed);
  const int n = 10;
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> prompt =
        Prompt(20 + static_cast<int>(rng() % 30), static_cast<int>(rng() % 3), on.tokenizer());
    const std::vector<int32_t> tail =
        Prompt(1 + static_cast<int>(rng() % 12), 500 + i, on.tokenizer());
    prompt.insert(prompt.end(), tail.begin() + 1, tail.end());
    requests.push_back(
        Request(prompt, static_cast<int>(rng() % 4), 8 + static_cast<int>(rng() % 24)));
  }
  std::vector<Result> results(n);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  std::vector<bool> cancelled(n, false);
  for (int i = 0; i < n; ++i) {
    handles.push_back(on.Add(requests[i], &results[i]));
    // Requests admitted in the same step all miss; those after find the earlier ones' blocks.
    if (stagger) on.Step();
    for (int s = 0; s < 5 && i == n / 2 - 1; ++s) on.Step();
  }
  int steps = 0;
  while (on.scheduler().has_work()) {
    on.Step();
    if (++steps == 6) {  // cancel two, mid-stream
      for (int i : {3, 7}) {
        if (!results[i].finished && !results[i].ids.empty()) {  // admitted, not finished
          handles[i]->Cancel();
          cancelled[i] = true;
        }
      }
    }
    ASSERT_LT(steps, 100000);
  }
  int64_t prompt_sum = 0, cached_sum = 0, hits = 0;
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(results[i].finished);
    prompt_sum += results[i].prompt_tokens;
    cached_sum += results[i].cached_prompt_tokens;
    hits += results[i].cached_prompt_tokens > 0 ? 1 : 0;
    EXPECT_LT(results[i].cached_prompt_tokens, results[i].prompt_tokens);
    if (cancelled[i]) continue;
    ExpectSame(results[i], off.Alone(requests[i]),
               "seed " + std::to_string(seed) + " request " + std::to_string(i));
  }
  EXPECT_GT(hits, 0) << "requests should share their system prompts";
  // Every request here was admitted before it ended, so the counters are the sums.
  EXPECT_EQ(on.stats().prefix_cache_queries_total.load(), prompt_sum);
  EXPECT_EQ(on.stats().prefix_cache_hits_total.load(), cached_sum);
  on.ExpectAllReturned();
  if (kv_tokens > 0) {
    EXPECT_GT(on.scheduler().preemptions(), 0) << "seed " << seed << ": the budget should preempt";
  }
}

TEST(PrefixCacheSchedulerTest, BatchedStreamsEqualTheCacheOff) {
  RunSharedStream(1, 0, false);
  RunSharedStream(2, 0, true);
}

TEST(PrefixCacheSchedulerTest, PreemptedStreamsOnASmallBudgetEqualTheCacheOff) {
  for (uint32_t seed : {3u, 4u, 5u}) RunSharedStream(seed, 192, seed % 2 == 0);
}

}  // namespace
}  // namespace specmoe::engine
