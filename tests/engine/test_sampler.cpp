// Sampler: greedy, seeded draws, top-k / top-p / min-p / temperature, penalties, logprobs; and the
// stop-string matcher used while streaming.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "core/error.h"
#include "engine/batch/sampler.h"

namespace hearth::engine {
namespace {

SamplingParams plain(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  return p;
}

SamplingParams greedy() { return plain(0.0f); }

std::vector<float> random_logits(size_t n, uint64_t seed, float scale = 3.0f) {
  std::mt19937_64 rng(seed);
  std::vector<float> logits(n);
  for (float& l : logits) l = scale * static_cast<float>(static_cast<double>(rng() >> 11) * 0x1.0p-53 - 0.5);
  return logits;
}

// Logits whose softmax is exactly proportional to `probs`.
std::vector<float> logits_for(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (const double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::map<Token, int> histogram(Sampler& sampler, std::span<const float> logits, int draws) {
  std::map<Token, int> counts;
  for (int i = 0; i < draws; ++i) ++counts[sampler.sample(logits, {}).token];
  return counts;
}

Token argmax(std::span<const float> logits) {
  return static_cast<Token>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

TEST(Sampler, GreedyIsArgmaxWithTiesToTheLowestId) {
  Sampler sampler(greedy());
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f};
  EXPECT_EQ(sampler.sample(logits, {}).token, 1);
  const std::vector<float> all_equal(7, 0.5f);
  EXPECT_EQ(sampler.sample(all_equal, {}).token, 0);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto random = random_logits(1000, seed);
    EXPECT_EQ(sampler.sample(random, {}).token, argmax(random));
  }
  SamplingParams negative = greedy();
  negative.temperature = -1.0f;
  Sampler sampler2(negative);
  EXPECT_EQ(sampler2.sample(logits, {}).token, 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  SamplingParams p;  // the defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05
  p.seed = 1234;
  const auto logits = random_logits(5000, 7, 8.0f);
  const auto run = [&](uint64_t seed) {
    SamplingParams q = p;
    q.seed = seed;
    Sampler sampler(q);
    std::vector<Token> tokens;
    for (int i = 0; i < 200; ++i) tokens.push_back(sampler.sample(logits, {}).token);
    return tokens;
  };
  const auto a = run(1234);
  EXPECT_EQ(a, run(1234));
  EXPECT_NE(a, run(1235));
  EXPECT_GT(std::set<Token>(a.begin(), a.end()).size(), 1u);
}

// The draws of a seed are pinned: std::mt19937_64 is specified exactly by the standard, and
// the sampler uses neither the standard distributions nor libm in what decides a draw, so these
// tokens are the same with every compiler, standard library and CPU (with GCC and Clang, -O0
// and -O2, they were). A change here changes every seeded run users may have recorded.
TEST(Sampler, SeededDrawsArePinned) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>((i * 37) % 50) / 10.0f - 2.5f;
  SamplingParams p;
  p.seed = 42;
  p.temperature = 1.0f;
  p.top_k = 10;
  p.top_p = 0.9f;
  p.min_p = 0.0f;
  Sampler sampler(p);
  std::vector<Token> tokens;
  for (int i = 0; i < 16; ++i) tokens.push_back(sampler.sample(logits, {}).token);
  EXPECT_EQ(tokens, (std::vector<Token>{12, 35, 12, 27, 16, 27, 35, 31, 4, 31, 27, 8, 12, 35, 39, 43}));
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplingParams p = plain(1.5f);
  p.top_k = 1;
  p.seed = 99;
  Sampler sampler(p);
  for (uint64_t seed = 0; seed < 50; ++seed) {
    const auto logits = random_logits(2000, seed);
    EXPECT_EQ(sampler.sample(logits, {}).token, argmax(logits));
  }
}

TEST(Sampler, TopKRestrictsTheSupport) {
  SamplingParams p = plain(5.0f);  // hot: without top-k every token would appear
  p.top_k = 3;
  Sampler sampler(p);
  const std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.5f, 2.9f, -1.0f};
  const auto counts = histogram(sampler, logits, 3000);
  EXPECT_EQ(counts.size(), 3u);
  for (const auto& [token, n] : counts) EXPECT_TRUE(token == 1 || token == 3 || token == 4) << token;
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  SamplingParams p = plain(1.0f);
  p.top_p = 0.75f;  // 0.5 < 0.75 <= 0.5 + 0.3: tokens {0, 1}
  Sampler sampler(p);
  const auto logits = logits_for({0.5, 0.3, 0.15, 0.05});
  const auto counts = histogram(sampler, logits, 4000);
  ASSERT_EQ(counts.size(), 2u);
  EXPECT_GT(counts.at(0), counts.at(1));
  // Renormalized over the nucleus: 0.5/0.8 and 0.3/0.8.
  EXPECT_NEAR(counts.at(0) / 4000.0, 0.625, 0.04);

  SamplingParams tiny = plain(1.0f);
  tiny.top_p = 0.0f;  // keeps at least one token: the most likely
  Sampler only_best(tiny);
  EXPECT_EQ(histogram(only_best, logits, 200), (std::map<Token, int>{{0, 200}}));
}

TEST(Sampler, MinPKeepsTokensNearTheBest) {
  SamplingParams p = plain(1.0f);
  p.min_p = 0.25f;  // p >= 0.125: tokens {0, 1, 2}
  Sampler sampler(p);
  const auto logits = logits_for({0.5, 0.3, 0.15, 0.05});
  const auto counts = histogram(sampler, logits, 4000);
  EXPECT_EQ(counts.size(), 3u);
  EXPECT_EQ(counts.count(3), 0u);

  SamplingParams over = plain(1.0f);
  over.min_p = 2.0f;  // nothing reaches the floor: the best stays
  Sampler only_best(over);
  EXPECT_EQ(histogram(only_best, logits, 100), (std::map<Token, int>{{0, 100}}));
}

// The allowed set by a slow, obviously correct full sort, in a vocabulary as large as Gemma's.
TEST(Sampler, TopPAndMinPOnALargeVocabularyMatchAFullSort) {
  const size_t n = 262144;
  auto logits = random_logits(n, 3, 4.0f);
  for (size_t i = 0; i < 50; ++i) logits[i * 997] += 12.0f;  // a few likely tokens
  SamplingParams p = plain(0.9f);
  p.top_p = 0.9f;
  p.min_p = 0.01f;

  // Scaled like the sampler's (float division), so that only a token within ~1e-7 of a boundary
  // could fall on the other side.
  std::vector<float> scaled(n);
  for (size_t i = 0; i < n; ++i) scaled[i] = logits[i] / 0.9f;
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scaled[a] > scaled[b] || (scaled[a] == scaled[b] && a < b); });
  const float max = scaled[order[0]];
  const auto weight = [&](size_t i) { return static_cast<double>(std::exp(scaled[i] - max)); };
  double z = 0.0;
  for (size_t i = 0; i < n; ++i) z += weight(i);
  const float floor = max + std::log(0.01f);
  std::set<Token> allowed;
  double mass = 0.0;
  for (const size_t i : order) {
    if (scaled[i] < floor) break;  // min-p, relative to the best
    allowed.insert(static_cast<Token>(i));
    mass += weight(i);
    if (mass >= 0.9 * z) break;  // top-p
  }
  ASSERT_GT(allowed.size(), 5u);

  Sampler sampler(p);
  const auto start = std::chrono::steady_clock::now();
  const auto counts = histogram(sampler, logits, 300);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& [token, count] : counts) EXPECT_TRUE(allowed.count(token)) << token;
  EXPECT_GT(counts.size(), 5u);
  // No full sort per token: 300 draws over 262144 logits take well under a second unsanitized.
  RecordProperty("seconds_for_300_draws", std::to_string(seconds));
}

// Top-k, greedy and top-N logprobs read the vocabulary without copying it, substituting the
// penalized logits; compared here with a plain penalized copy and a full sort, ties included.
TEST(Sampler, TopKGreedyAndLogprobsWithPenaltiesMatchAFullSort) {
  const size_t n = 100000;
  auto logits = random_logits(n, 11, 10.0f);
  std::mt19937_64 rng(5);
  std::vector<Token> history;
  for (int i = 0; i < 64; ++i) history.push_back(static_cast<Token>(rng() % n));
  // Make the history hold some of the best tokens, and create exact ties around them.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::partial_sort(order.begin(), order.begin() + 40, order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  for (int i = 0; i < 40; i += 3) history.push_back(static_cast<Token>(order[static_cast<size_t>(i)]));
  for (size_t i = 0; i < 40; i += 2) logits[(order[i] + 7) % n] = logits[order[i]];

  SamplingParams p = plain(1000.0f);  // flat over whatever survives top-k
  p.top_k = 20;
  p.repeat_penalty = 1.3f;
  p.presence_penalty = 0.25f;
  p.frequency_penalty = 0.1f;
  p.repeat_last_n = -1;
  p.n_logprobs = 10;

  std::vector<float> penalized = logits;
  std::map<Token, int> occurrences;
  for (const Token t : history) ++occurrences[t];
  for (const auto& [t, count] : occurrences) {
    float& l = penalized[static_cast<size_t>(t)];
    l = l > 0.0f ? l / p.repeat_penalty : l * p.repeat_penalty;
    l -= p.presence_penalty + p.frequency_penalty * static_cast<float>(count);
  }
  const auto by_value = [](const std::vector<float>& v) {
    std::vector<size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), size_t{0});
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] > v[b]; });
    return idx;
  };
  const auto penalized_order = by_value(penalized);
  const std::set<Token> top20(penalized_order.begin(), penalized_order.begin() + 20);

  Sampler sampler(p);
  std::set<Token> seen;
  SampledToken last{};
  for (int i = 0; i < 1500; ++i) {
    last = sampler.sample(logits, history);
    seen.insert(last.token);
  }
  EXPECT_EQ(seen, top20);

  const auto raw_order = by_value(logits);
  ASSERT_EQ(last.top.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(last.top[i].token, static_cast<Token>(raw_order[i])) << i;

  SamplingParams g = p;
  g.temperature = 0.0f;
  EXPECT_EQ(Sampler(g).sample(logits, history).token, static_cast<Token>(penalized_order[0]));
}

TEST(Sampler, TemperatureShapesTheDistribution) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.0f, -1.0f};
  Sampler cold(plain(0.01f));
  EXPECT_EQ(histogram(cold, logits, 500), (std::map<Token, int>{{0, 500}}));

  Sampler hot(plain(100.0f));
  const auto spread = histogram(hot, logits, 4000);
  ASSERT_EQ(spread.size(), 4u);
  for (const auto& [token, n] : spread) EXPECT_NEAR(n / 4000.0, 0.25, 0.04) << token;

  // At temperature 1 the frequencies follow the softmax.
  Sampler neutral(plain(1.0f));
  const auto counts = histogram(neutral, logits, 8000);
  double z = 0.0;
  for (const float l : logits) z += std::exp(static_cast<double>(l));
  for (Token t = 0; t < 4; ++t) {
    const double expected = std::exp(static_cast<double>(logits[static_cast<size_t>(t)])) / z;
    const double seen = counts.count(t) ? counts.at(t) / 8000.0 : 0.0;
    EXPECT_NEAR(seen, expected, 0.03) << t;
  }
}

TEST(Sampler, RepeatPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  SamplingParams p = greedy();
  p.repeat_penalty = 1.5f;
  Sampler sampler(p);
  const std::vector<Token> history = {0};
  // Positive: 2.0 / 1.5 = 1.33 < 1.8.
  const std::vector<float> positive = {2.0f, 1.8f};
  EXPECT_EQ(Sampler(greedy()).sample(positive, history).token, 0);
  EXPECT_EQ(sampler.sample(positive, history).token, 1);
  // Negative: -1.0 * 1.5 = -1.5 < -1.2.
  const std::vector<float> negative = {-1.0f, -1.2f};
  EXPECT_EQ(sampler.sample(negative, history).token, 1);
  // Applied once per token, however often it occurs: 2.0 / 1.5 = 1.33 > 1.3.
  const std::vector<float> close = {2.0f, 1.3f};
  EXPECT_EQ(sampler.sample(close, std::vector<Token>{0, 0, 0, 0}).token, 0);
}

TEST(Sampler, PenaltiesLookOnlyAtTheLastRepeatLastNTokens) {
  SamplingParams p = greedy();
  p.repeat_penalty = 2.0f;
  p.repeat_last_n = 2;
  const std::vector<float> logits = {2.0f, 1.5f, 0.0f};
  const std::vector<Token> old_zero = {0, 2, 2};  // token 0 left the window of 2
  const std::vector<Token> recent_zero = {2, 0, 2};
  EXPECT_EQ(Sampler(p).sample(logits, old_zero).token, 0);
  EXPECT_EQ(Sampler(p).sample(logits, recent_zero).token, 1);
  p.repeat_last_n = 0;  // off
  EXPECT_EQ(Sampler(p).sample(logits, recent_zero).token, 0);
  p.repeat_last_n = -1;  // the whole history
  EXPECT_EQ(Sampler(p).sample(logits, std::vector<Token>{0, 2, 2, 2, 2, 2}).token, 1);
  // Tokens outside the vocabulary are ignored.
  EXPECT_EQ(Sampler(p).sample(logits, std::vector<Token>{-1, 3, 1000}).token, 0);
}

TEST(Sampler, PresenceOnceAndFrequencyPerOccurrence) {
  // 1.0 - presence 0.1 - frequency 0.1 * count: count 1 -> 0.8, count 2 -> 0.7 (between 0.69
  // and 0.71), count 3 -> 0.6.
  SamplingParams p = greedy();
  p.presence_penalty = 0.1f;
  p.frequency_penalty = 0.1f;
  const std::vector<float> logits = {1.0f, 0.69f, 0.71f, 0.65f};
  EXPECT_EQ(Sampler(p).sample(logits, std::vector<Token>{0}).token, 0);
  EXPECT_EQ(Sampler(p).sample(logits, std::vector<Token>{0, 0}).token, 2);
  EXPECT_EQ(Sampler(p).sample(logits, std::vector<Token>{0, 0, 2, 0}).token, 1);  // 0 -> 0.6, 2 -> 0.51
  SamplingParams presence_only = greedy();
  presence_only.presence_penalty = 0.5f;
  EXPECT_EQ(Sampler(presence_only).sample(std::vector<float>{1.0f, 0.8f}, std::vector<Token>{0}).token, 1);
  SamplingParams negative = greedy();
  negative.frequency_penalty = -1.0f;  // a negative penalty encourages repetition
  EXPECT_EQ(Sampler(negative).sample(std::vector<float>{1.0f, 0.5f}, std::vector<Token>{1}).token, 1);
}

TEST(Sampler, LogprobsAreTheRawLogSoftmax) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, 0.5f, 3.0f};
  double z = 0.0;
  for (const float l : logits) z += std::exp(static_cast<double>(l));
  const auto logprob = [&](Token t) { return static_cast<double>(logits[static_cast<size_t>(t)]) - std::log(z); };

  SamplingParams p = greedy();
  p.n_logprobs = 3;
  p.repeat_penalty = 3.0f;  // penalties and temperature do not change the reported logprobs
  const std::vector<Token> history = {2};
  const SampledToken s = Sampler(p).sample(logits, history);
  EXPECT_EQ(s.token, 4);
  EXPECT_NEAR(s.logprob, logprob(4), 1e-6);
  ASSERT_EQ(s.top.size(), 3u);
  EXPECT_EQ(s.top[0].token, 2);  // equal logits: lower id first
  EXPECT_EQ(s.top[1].token, 4);
  EXPECT_EQ(s.top[2].token, 1);
  for (const TokenLogprob& t : s.top) EXPECT_NEAR(t.logprob, logprob(t.token), 1e-6) << t.token;

  SamplingParams many = plain(0.7f);
  many.n_logprobs = 100;  // more than the vocabulary: all of it, sorted
  const SampledToken all = Sampler(many).sample(logits, {});
  ASSERT_EQ(all.top.size(), logits.size());
  for (size_t i = 1; i < all.top.size(); ++i) EXPECT_GE(all.top[i - 1].logprob, all.top[i].logprob);
  EXPECT_NEAR(all.logprob, logprob(all.token), 1e-6);

  EXPECT_TRUE(Sampler(greedy()).sample(logits, {}).top.empty());
}

TEST(Sampler, LogprobsSurviveExtremeLogits) {
  const std::vector<float> logits = {1000.0f, 999.0f, -std::numeric_limits<float>::infinity()};
  SamplingParams p = greedy();
  p.n_logprobs = 3;
  const SampledToken s = Sampler(p).sample(logits, {});
  EXPECT_EQ(s.token, 0);
  EXPECT_NEAR(s.logprob, -std::log1p(std::exp(-1.0)), 1e-5);
  EXPECT_TRUE(std::isinf(s.top[2].logprob) && s.top[2].logprob < 0);
}

TEST(Sampler, RejectsNonsenseParametersAndEmptyLogits) {
  SamplingParams p;
  p.repeat_penalty = 0.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p = SamplingParams{};
  p.n_logprobs = -1;
  EXPECT_THROW(Sampler{p}, Error);
  p = SamplingParams{};
  p.temperature = std::nanf("");
  EXPECT_THROW(Sampler{p}, Error);
  Sampler sampler{SamplingParams{}};
  EXPECT_THROW(sampler.sample({}, {}), Error);
}

// --- logit bias ---

TEST(Sampler, LogitBiasBansAndForcesTokens) {
  const std::vector<float> logits = {1.0f, 4.0f, 3.5f, -2.0f, 0.5f};
  SamplingParams g = greedy();
  g.logit_bias = {{1, -100.0f}};
  EXPECT_EQ(Sampler(g).sample(logits, {}).token, 2);  // the best banned: the second best
  g.logit_bias = {{3, 100.0f}};
  EXPECT_EQ(Sampler(g).sample(logits, {}).token, 3);  // the worst forced

  // Drawn at a high temperature with nothing cut: the banned token never, the forced one always.
  SamplingParams hot = plain(2.0f);
  hot.seed = 3;
  hot.logit_bias = {{1, -100.0f}, {2, -100.0f}};
  Sampler banning(hot);
  const auto counts = histogram(banning, logits, 5000);
  EXPECT_EQ(counts.count(1), 0u);
  EXPECT_EQ(counts.count(2), 0u);
  EXPECT_EQ(counts.size(), 3u);  // the others all drawn
  hot.logit_bias = {{3, 100.0f}};
  Sampler forcing(hot);
  EXPECT_EQ(histogram(forcing, logits, 2000), (std::map<Token, int>{{3, 2000}}));

  // Logprobs stay those of the raw logits (as the penalties leave them).
  SamplingParams lp = greedy();
  lp.n_logprobs = 2;
  const SampledToken unbiased = Sampler(lp).sample(logits, {});
  lp.logit_bias = {{3, 100.0f}};
  const SampledToken biased = Sampler(lp).sample(logits, {});
  EXPECT_EQ(biased.token, 3);
  ASSERT_EQ(biased.top.size(), 2u);
  EXPECT_EQ(biased.top[0].token, unbiased.top[0].token);
  EXPECT_EQ(biased.top[0].logprob, unbiased.top[0].logprob);
  EXPECT_LT(biased.logprob, -5.0f);
}

TEST(Sampler, LogitBiasShiftsTheDistributionByItsExponent) {
  // Equal logits; a bias of ln 3 on token 1 makes it weigh 3 against 1 for each of the others.
  const std::vector<float> logits(4, 0.25f);
  SamplingParams p = plain(1.0f);
  p.seed = 17;
  p.logit_bias = {{1, std::log(3.0f)}, {9, 50.0f}};  // token 9 is outside the vocabulary: ignored
  Sampler sampler(p);
  const int draws = 60000;
  const auto counts = histogram(sampler, logits, draws);
  ASSERT_EQ(counts.size(), 4u);
  EXPECT_NEAR(counts.at(1) / static_cast<double>(draws), 0.5, 0.01);
  for (Token t : {0, 2, 3}) EXPECT_NEAR(counts.at(t) / static_cast<double>(draws), 1.0 / 6.0, 0.01) << t;
}

// The bias goes in before the penalties (llama.cpp's order) and through the same no-copy paths
// (top-k heap, greedy scan): compared with a biased, penalized copy of the vocabulary.
TEST(Sampler, LogitBiasWithPenaltiesAndTopKMatchesACopy) {
  const size_t n = 50000;
  const auto logits = random_logits(n, 23, 8.0f);
  std::mt19937_64 rng(29);
  std::vector<Token> history;
  for (int i = 0; i < 200; ++i) history.push_back(static_cast<Token>(rng() % 400));  // overlaps the biases
  SamplingParams p = plain(1000.0f);
  p.top_k = 16;
  p.repeat_penalty = 1.2f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.05f;
  p.repeat_last_n = -1;
  std::map<Token, float> bias;
  while (bias.size() < 300) bias[static_cast<Token>(rng() % 600)] = static_cast<float>(static_cast<int>(rng() % 41) - 20);
  for (const auto& [t, b] : bias) p.logit_bias.emplace_back(t, b);
  std::reverse(p.logit_bias.begin(), p.logit_bias.end());  // any order: the Sampler sorts

  std::vector<float> adjusted = logits;
  for (const auto& [t, b] : bias) adjusted[static_cast<size_t>(t)] += b;
  std::map<Token, int> occurrences;
  for (const Token t : history) ++occurrences[t];
  for (const auto& [t, count] : occurrences) {
    float& l = adjusted[static_cast<size_t>(t)];
    l = l > 0.0f ? l / p.repeat_penalty : l * p.repeat_penalty;
    l -= p.presence_penalty + p.frequency_penalty * static_cast<float>(count);
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return adjusted[a] > adjusted[b]; });
  const std::set<Token> top16(order.begin(), order.begin() + 16);

  Sampler sampler(p);
  std::set<Token> seen;
  for (int i = 0; i < 1500; ++i) seen.insert(sampler.sample(logits, history).token);
  EXPECT_EQ(seen, top16);
  SamplingParams g = p;
  g.temperature = 0.0f;
  EXPECT_EQ(Sampler(g).sample(logits, history).token, static_cast<Token>(order[0]));
}

TEST(Sampler, RejectsMalformedLogitBias) {
  const auto refused = [](std::vector<std::pair<Token, float>> bias) {
    SamplingParams p;
    p.logit_bias = std::move(bias);
    EXPECT_THROW(Sampler{p}, Error);
  };
  refused({{-1, 1.0f}});
  refused({{4, 1.0f}, {4, 2.0f}});
  refused({{4, 100.5f}});
  refused({{4, -101.0f}});
  refused({{4, std::nanf("")}});
  refused({{4, std::numeric_limits<float>::infinity()}});
  std::vector<std::pair<Token, float>> many;
  for (size_t i = 0; i <= kMaxLogitBias; ++i) many.emplace_back(static_cast<Token>(i), 1.0f);
  refused(many);
  many.pop_back();
  SamplingParams ok;
  ok.logit_bias = many;
  EXPECT_NO_THROW(Sampler{ok});
}

// --- StopStringMatcher ---

TEST(StopStringMatcher, StopInsideOnePush) {
  StopStringMatcher m({"END"});
  bool stopped = false;
  EXPECT_EQ(m.push("hello END world", stopped), "hello ");
  EXPECT_TRUE(stopped);
}

TEST(StopStringMatcher, StopAcrossPushes) {
  StopStringMatcher m({"END"});
  bool stopped = false;
  EXPECT_EQ(m.push("hel", stopped), "hel");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.push("lo E", stopped), "lo ");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.push("N", stopped), "");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.push("D and more", stopped), "");
  EXPECT_TRUE(stopped);
}

TEST(StopStringMatcher, PartialPrefixThatIsNotAStopIsEmitted) {
  StopStringMatcher m({"END"});
  bool stopped = false;
  EXPECT_EQ(m.push("abc EN", stopped), "abc ");
  EXPECT_EQ(m.push("TRY", stopped), "ENTRY");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.push("E", stopped), "");
  EXPECT_EQ(m.flush(), "E");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopStringMatcher, OverlappingStartsAreHandled) {
  StopStringMatcher m({"aab"});
  bool stopped = false;
  EXPECT_EQ(m.push("aa", stopped), "");
  EXPECT_EQ(m.push("ab", stopped), "a");
  EXPECT_TRUE(stopped);
}

TEST(StopStringMatcher, MultipleStopStringsEarliestWins) {
  StopStringMatcher m({"\n\n", "User:"});
  bool stopped = false;
  EXPECT_EQ(m.push("Hi\nUs", stopped), "Hi\n");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.push("er: next", stopped), "");
  EXPECT_TRUE(stopped);

  StopStringMatcher both({"User:", "\n\n"});
  EXPECT_EQ(both.push("a\n\nUser: b", stopped), "a");
  EXPECT_TRUE(stopped);
}

TEST(StopStringMatcher, NoStopsOrEmptyStopsPassEverything) {
  bool stopped = true;
  StopStringMatcher none({});
  EXPECT_EQ(none.push("anything", stopped), "anything");
  EXPECT_FALSE(stopped);
  StopStringMatcher empty({""});
  EXPECT_EQ(empty.push("anything", stopped), "anything");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(empty.flush(), "");
}

TEST(StopStringMatcher, FlushReturnsWhatWasHeldBack) {
  StopStringMatcher m({"</answer>"});
  bool stopped = false;
  EXPECT_EQ(m.push("42</ans", stopped), "42");
  EXPECT_EQ(m.flush(), "</ans");
}

// A Sampler resumed after k tokens (a sequence replayed onto a rebuilt pipeline) draws exactly
// what the original draws next, also when some of the k samples had nothing to draw from (every
// logit -inf: each sample takes its one draw all the same).
TEST(Sampler, ResumedAfterKTokensContinuesTheSameDraws) {
  SamplingParams p = plain(0.9f);
  p.top_k = 20;
  p.seed = 1234;
  const std::vector<float> degenerate(64, -std::numeric_limits<float>::infinity());
  std::vector<std::vector<float>> steps;
  for (uint64_t i = 0; i < 40; ++i) steps.push_back(i % 7 == 3 ? degenerate : random_logits(64, 100 + i, 1.0f));
  std::vector<Token> history = {1, 2, 3};
  Sampler original(p);
  std::vector<Token> tokens;
  for (const auto& logits : steps) {
    tokens.push_back(original.sample(logits, history).token);
    history.push_back(tokens.back());
  }
  std::set<Token> distinct(tokens.begin(), tokens.end());
  ASSERT_GT(distinct.size(), 5u) << "the draws must matter for this test to mean anything";
  for (uint32_t k : {0u, 1u, 3u, 4u, 17u, 39u}) {
    Sampler resumed(p, k);
    std::vector<Token> h = {1, 2, 3};
    h.insert(h.end(), tokens.begin(), tokens.begin() + k);
    for (size_t i = k; i < steps.size(); ++i) {
      ASSERT_EQ(resumed.sample(steps[i], h).token, tokens[i]) << "resumed after " << k << ", step " << i;
      h.push_back(tokens[i]);
    }
  }
  // Greedy takes no draws: resuming it changes nothing.
  Sampler g(greedy(), 5);
  EXPECT_EQ(g.sample(steps[0], history).token,
            static_cast<Token>(std::max_element(steps[0].begin(), steps[0].end()) - steps[0].begin()));
}

// Random texts cut into random pieces: what comes out is exactly the text before the first stop
// string (or all of it), so no part of a stop string is ever emitted.
TEST(StopStringMatcher, RandomChunkingMatchesAReference) {
  const std::vector<std::string> stops = {"END", "NEE", "DD"};
  std::mt19937_64 rng(42);
  const std::string alphabet = "ENDx";
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const size_t length = rng() % 30;
    for (size_t i = 0; i < length; ++i) text += alphabet[rng() % alphabet.size()];
    size_t first = std::string::npos;
    for (const std::string& stop : stops) first = std::min(first, text.find(stop));
    const std::string expected = text.substr(0, first);

    StopStringMatcher m(stops);
    std::string out;
    bool stopped = false;
    for (size_t at = 0; at < text.size() && !stopped;) {
      const size_t piece = 1 + rng() % 4;
      out += m.push(std::string_view(text).substr(at, piece), stopped);
      at += piece;
    }
    if (!stopped) out += m.flush();
    EXPECT_EQ(out, expected) << text;
    EXPECT_EQ(stopped, first != std::string::npos) << text;
  }
}

}  // namespace
}  // namespace hearth::engine
