#include "engine/batch/sampler.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace hearth::engine {
namespace {

using Candidate = std::pair<float, Token>;  // (logit or weight, token)

// Higher value first; equal values by lower token id, so every ordering is deterministic.
bool better(const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// A uniform double in [0, 1) from the top 53 bits of one 64-bit draw: the same on every standard
// library (std::uniform_real_distribution is not).
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Four floats at a time (SSE2 / NEON width) with the compilers' generic vector extension.
using f32x4 = float __attribute__((vector_size(16)));
using i32x4 = int32_t __attribute__((vector_size(16)));

constexpr f32x4 splat(float v) { return f32x4{v, v, v, v}; }

// exp(x) for x <= 0 to about 1e-7 relative error; x < -87 (and -inf) give 0. Softmax over a
// 262144-token vocabulary calls this for every token, where libm's expf is the bottleneck.
// Only IEEE +, -, * and conversions (the build forbids FMA contraction), so every machine
// computes the same bits, and the draws of a seed do not depend on the libm.
[[gnu::always_inline]] inline f32x4 exp_nonpositive(f32x4 x) {
  const i32x4 underflow = x < splat(-87.0f);
  // Clamped so that the conversion to int below stays in range.
  x = std::bit_cast<f32x4>((std::bit_cast<i32x4>(x) & ~underflow) |
                           (std::bit_cast<i32x4>(splat(-87.0f)) & underflow));
  // x = k ln2 + r, |r| <= ln2 / 2; ln2 split in two so that k * ln2_hi is exact.
  const f32x4 t = x * splat(1.44269504088896341f);
  const f32x4 k = (t + splat(12582912.0f)) - splat(12582912.0f);  // round to nearest integer
  const f32x4 r = (x - k * splat(0.693145751953125f)) - k * splat(1.428606765330187045e-06f);
  f32x4 p = splat(1.0f / 5040.0f);  // Taylor series of e^r to r^7
  p = p * r + splat(1.0f / 720.0f);
  p = p * r + splat(1.0f / 120.0f);
  p = p * r + splat(1.0f / 24.0f);
  p = p * r + splat(1.0f / 6.0f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  const i32x4 exponent = (__builtin_convertvector(k, i32x4) + 127) << 23;  // 2^k
  return std::bit_cast<f32x4>(std::bit_cast<i32x4>(p * std::bit_cast<f32x4>(exponent)) & ~underflow);
}

[[gnu::always_inline]] inline f32x4 load4(const float* p) {
  f32x4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

[[gnu::always_inline]] inline f32x4 select(i32x4 mask, f32x4 if_set, f32x4 if_clear) {
  return std::bit_cast<f32x4>((std::bit_cast<i32x4>(if_set) & mask) | (std::bit_cast<i32x4>(if_clear) & ~mask));
}

bool any(i32x4 mask) { return (mask[0] | mask[1] | mask[2] | mask[3]) != 0; }

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// Largest of p[0, n), -inf when empty; NaNs are ignored.
float max_of(const float* p, size_t n) {
  f32x4 m0 = splat(kMinusInf);
  f32x4 m1 = splat(kMinusInf);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const f32x4 a = load4(p + i);
    const f32x4 b = load4(p + i + 4);
    m0 = select(a > m0, a, m0);
    m1 = select(b > m1, b, m1);
  }
  const f32x4 m = select(m1 > m0, m1, m0);
  float max = std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
  for (; i < n; ++i) max = p[i] > max ? p[i] : max;
  return max;
}

// log(sum(exp(logits))): the log-softmax normalizer of the raw logits, whose largest is `max`.
double log_sum_exp(std::span<const float> logits, float max) {
  if (!std::isfinite(max)) return static_cast<double>(max);
  const size_t n = logits.size();
  double sum = 0.0;
  size_t i = 0;
  while (i + 8 <= n) {
    // Float partial sums over short runs, added up in double.
    f32x4 acc0 = splat(0.0f);
    f32x4 acc1 = splat(0.0f);
    const size_t end = std::min(n - (n - i) % 8, i + 512);
    for (; i < end; i += 8) {
      acc0 += exp_nonpositive(load4(&logits[i]) - max);
      acc1 += exp_nonpositive(load4(&logits[i + 4]) - max);
    }
    const f32x4 s = acc0 + acc1;
    sum += static_cast<double>((s[0] + s[1]) + (s[2] + s[3]));
  }
  for (; i < n; ++i) sum += static_cast<double>(exp_nonpositive(splat(logits[i] - max))[0]);
  return static_cast<double>(max) + std::log(sum);
}

// Unnormalized softmax weights at a temperature: exp(l / T - max / T), where `max` is the
// largest logit, so the best token weighs exactly 1. Lane by lane the same arithmetic whichever
// path computes it.
struct Weigher {
  float temperature;
  float shift;  // max / temperature

  Weigher(float t, float max) : temperature(t), shift(max / t) {}
  f32x4 operator()(f32x4 logits) const { return exp_nonpositive(logits / splat(temperature) - splat(shift)); }
  float operator()(float logit) const { return (*this)(splat(logit))[0]; }
};

// Replaces the logits of `candidates` by their weights.
void logits_to_weights(std::span<Candidate> candidates, const Weigher& weigh) {
  const size_t n = candidates.size();
  for (size_t i = 0; i < n; i += 4) {
    const size_t lanes = std::min<size_t>(4, n - i);
    f32x4 l = splat(kMinusInf);
    for (size_t j = 0; j < lanes; ++j) l[j] = candidates[i + j].first;
    const f32x4 w = weigh(l);
    for (size_t j = 0; j < lanes; ++j) candidates[i + j].first = w[j];
  }
}

// (token, adjusted logit) for each in-vocabulary token that has a logit bias or is among the
// last repeat_last_n of `history` (< 0: all of it, 0: none), sorted by token: the raw logit plus
// its bias, then the penalties (llama.cpp's order). `params.logit_bias` is sorted by token with
// no duplicates (the Sampler's constructor makes it so). Tokens outside the vocabulary can be
// neither biased nor penalized and are ignored.
std::vector<std::pair<Token, float>> penalized_logits(const SamplingParams& params, std::span<const float> logits,
                                                      std::span<const Token> history) {
  // (token, occurrences) in the penalty window, sorted by token.
  std::vector<std::pair<Token, int32_t>> counts;
  const bool active = params.repeat_penalty != 1.0f || params.presence_penalty != 0.0f ||
                      params.frequency_penalty != 0.0f;
  if (active && params.repeat_last_n != 0 && !history.empty()) {
    const size_t window = params.repeat_last_n < 0 ? history.size()
                                                   : std::min(history.size(), static_cast<size_t>(params.repeat_last_n));
    std::vector<Token> recent(history.end() - static_cast<std::ptrdiff_t>(window), history.end());
    std::sort(recent.begin(), recent.end());
    for (size_t i = 0; i < recent.size();) {
      size_t j = i;
      while (j < recent.size() && recent[j] == recent[i]) ++j;
      counts.emplace_back(recent[i], static_cast<int32_t>(j - i));
      i = j;
    }
  }
  std::vector<std::pair<Token, float>> adjusted;
  const auto& bias = params.logit_bias;
  if (counts.empty() && bias.empty()) return adjusted;
  adjusted.reserve(counts.size() + bias.size());
  size_t c = 0, b = 0;
  while (c < counts.size() || b < bias.size()) {
    // The next token of either sorted list (both when they name the same one).
    const bool take_count = c < counts.size() && (b == bias.size() || counts[c].first <= bias[b].first);
    const bool take_bias = b < bias.size() && (c == counts.size() || bias[b].first <= counts[c].first);
    const Token token = take_count ? counts[c].first : bias[b].first;
    const int32_t count = take_count ? counts[c++].second : 0;
    const float add = take_bias ? bias[b++].second : 0.0f;
    if (token < 0 || static_cast<size_t>(token) >= logits.size()) continue;
    float logit = logits[static_cast<size_t>(token)] + add;
    if (count > 0) {
      // llama.cpp: positive logits are divided, the others multiplied (both make it less likely).
      logit = logit > 0.0f ? logit / params.repeat_penalty : logit * params.repeat_penalty;
      // OpenAI: presence once, frequency per occurrence.
      logit -= params.presence_penalty + params.frequency_penalty * static_cast<float>(count);
    }
    adjusted.emplace_back(token, logit);
  }
  return adjusted;
}

// The logits with the penalized ones substituted, read without copying the vocabulary: the
// tokens between two penalized ones are scanned as contiguous runs of the raw logits.
class PenalizedLogits {
 public:
  PenalizedLogits(std::span<const float> logits, std::vector<std::pair<Token, float>> penalized)
      : logits_(logits), penalized_(std::move(penalized)) {}

  float max() const {
    float max = kMinusInf;
    for_each_run([&](size_t begin, size_t end) { max = std::max(max, max_of(logits_.data() + begin, end - begin)); });
    for (const auto& [token, logit] : penalized_) max = logit > max ? logit : max;
    return max;
  }

  // The lowest token whose logit is `value` (0 when none is).
  Token first_equal_to(float value) const {
    size_t next = 0;
    for (const auto& [token, logit] : penalized_) {
      const auto at = static_cast<size_t>(token);
      for (size_t i = next; i < at; ++i) {
        if (logits_[i] == value) return static_cast<Token>(i);
      }
      if (logit == value) return token;
      next = at + 1;
    }
    for (size_t i = next; i < logits_.size(); ++i) {
      if (logits_[i] == value) return static_cast<Token>(i);
    }
    return 0;
  }

  // All tokens with their weights, in token order (copying and weighing in one pass).
  void all_weights(const Weigher& weigh, std::vector<Candidate>& out) const {
    const size_t n = logits_.size();
    out.resize(n);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
      const f32x4 w = weigh(load4(&logits_[i]));
      for (size_t j = 0; j < 4; ++j) out[i + j] = {w[j], static_cast<Token>(i + j)};
    }
    for (; i < n; ++i) out[i] = {weigh(logits_[i]), static_cast<Token>(i)};
    for (const auto& [token, logit] : penalized_) out[static_cast<size_t>(token)].first = weigh(logit);
  }

  // The k best candidates (by `better`), best first, in one pass over the vocabulary: a heap of
  // the k best so far, and runs of 8 logits below the worst of them skipped with one compare.
  // NaN logits are never taken (they would break the heap's order).
  void top_k(size_t k, std::vector<Candidate>& out) const {
    out.clear();
    out.reserve(k);
    const auto offer = [&](Candidate c) {
      if (std::isnan(c.first)) return;
      if (out.size() < k) {
        out.push_back(c);
        std::push_heap(out.begin(), out.end(), better);  // front: the worst kept
      } else if (better(c, out.front())) {
        std::pop_heap(out.begin(), out.end(), better);
        out.back() = c;
        std::push_heap(out.begin(), out.end(), better);
      }
    };
    for (const auto& [token, logit] : penalized_) offer({logit, token});
    for_each_run([&](size_t begin, size_t end) {
      size_t i = begin;
      for (; i < end && out.size() < k; ++i) offer({logits_[i], static_cast<Token>(i)});
      for (; i + 8 <= end; i += 8) {
        // >=: an equal logit may still win its tie against a penalized token of higher id.
        const f32x4 worst = splat(out.front().first);
        if (!any((load4(&logits_[i]) >= worst) | (load4(&logits_[i + 4]) >= worst))) continue;
        for (size_t j = i; j < i + 8; ++j) offer({logits_[j], static_cast<Token>(j)});
      }
      for (; i < end; ++i) offer({logits_[i], static_cast<Token>(i)});
    });
    std::sort_heap(out.begin(), out.end(), better);
  }

 private:
  template <class F>
  void for_each_run(F&& run) const {
    size_t next = 0;
    for (const auto& [token, logit] : penalized_) {
      const auto at = static_cast<size_t>(token);
      if (at > next) run(next, at);
      next = at + 1;
    }
    if (logits_.size() > next) run(next, logits_.size());
  }

  std::span<const float> logits_;
  std::vector<std::pair<Token, float>> penalized_;  // sorted by token
};

}  // namespace

Sampler::Sampler(const SamplingParams& params, uint32_t resumed) : params_(params), rng_(params.seed) {
  if (params.temperature > 0.0f) rng_.discard(resumed);
  const auto require = [](bool ok, std::string_view what) {
    if (!ok) throw Error(fmt::format("sampling parameters: {}", what));
  };
  auto& bias = params_.logit_bias;
  require(bias.size() <= kMaxLogitBias, fmt::format("logit_bias has {} entries (at most {})", bias.size(), kMaxLogitBias));
  std::sort(bias.begin(), bias.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < bias.size(); ++i) {
    const auto [token, value] = bias[i];
    require(token >= 0, fmt::format("logit_bias names token {}", token));
    require(i == 0 || bias[i - 1].first != token, fmt::format("logit_bias names token {} twice", token));
    require(std::isfinite(value) && std::fabs(value) <= kMaxLogitBiasValue,
            fmt::format("logit_bias of token {} is {} (-{} to {})", token, value, kMaxLogitBiasValue, kMaxLogitBiasValue));
  }
  require(std::isfinite(params.temperature), fmt::format("temperature must be finite, not {}", params.temperature));
  require(!std::isnan(params.top_p), "top_p is NaN");
  require(!std::isnan(params.min_p), "min_p is NaN");
  require(std::isfinite(params.repeat_penalty) && params.repeat_penalty > 0.0f,
          fmt::format("repeat_penalty must be a positive number, not {}", params.repeat_penalty));
  require(std::isfinite(params.presence_penalty), "presence_penalty must be finite");
  require(std::isfinite(params.frequency_penalty), "frequency_penalty must be finite");
  require(params.n_logprobs >= 0, fmt::format("n_logprobs must be >= 0, not {}", params.n_logprobs));
}

SampledToken Sampler::sample(std::span<const float> logits, std::span<const Token> history, double known_log_z) {
  if (logits.empty()) throw Error("sampler: no logits (empty vocabulary)");
  const size_t n_vocab = logits.size();
  const float raw_max = max_of(logits.data(), n_vocab);
  const double log_z = std::isnan(known_log_z) ? log_sum_exp(logits, raw_max) : known_log_z;
  SampledToken result{};
  const auto finish = [&](Token token) {
    result.token = token;
    result.logprob = static_cast<float>(static_cast<double>(logits[static_cast<size_t>(token)]) - log_z);
    return result;
  };

  // Top-N alternatives by raw logit (before penalties and temperature).
  if (params_.n_logprobs > 0) {
    PenalizedLogits(logits, {}).top_k(std::min(n_vocab, static_cast<size_t>(params_.n_logprobs)), candidates_);
    result.top.reserve(candidates_.size());
    for (const Candidate& c : candidates_) {
      result.top.push_back({c.second, static_cast<float>(static_cast<double>(c.first) - log_z)});
    }
  }

  auto penalized = penalized_logits(params_, logits, history);
  const bool unpenalized = penalized.empty();
  const PenalizedLogits view(logits, std::move(penalized));
  const float max = unpenalized ? raw_max : view.max();
  if (params_.temperature <= 0.0f) return finish(view.first_equal_to(max));
  // Exactly one draw per sample, taken here even when it goes unused, so that a resumed
  // Sampler can skip the draws of the tokens before it by their count alone.
  const double uniform = uniform01(rng_);
  // The degenerate cases with no distribution to draw from (every logit -inf, or an infinite
  // one): the best token, the lowest id among equals.
  if (!std::isfinite(max)) return finish(view.first_equal_to(max));

  // Top-k (the k best, sorted, without copying the vocabulary), temperature and softmax: from
  // here on candidates_[i].first is a weight in [0, 1], the best's exactly 1; probabilities are
  // weights / z.
  const Weigher weigh(params_.temperature, max);
  size_t sorted = 0;  // candidates_[0, sorted) are the best `sorted`, in order
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n_vocab) {
    view.top_k(static_cast<size_t>(params_.top_k), candidates_);
    sorted = candidates_.size();
    logits_to_weights(candidates_, weigh);
  } else {
    view.all_weights(weigh, candidates_);
  }
  size_t count = candidates_.size();
  double z = 0.0;
  for (size_t i = 0; i < count; ++i) z += static_cast<double>(candidates_[i].first);

  // Top-p: the smallest set of most likely tokens whose mass reaches top_p, at least one. The
  // order is extended by partial sorts of growing size, so a small nucleus in a large
  // vocabulary never costs a full sort.
  if (params_.top_p < 1.0f) {
    const double target = static_cast<double>(params_.top_p) * z;
    double mass = 0.0;
    size_t kept = 0;
    size_t grow = 64;
    while (kept < count) {
      if (kept == sorted) {
        const size_t next = std::min(count, sorted + grow);
        std::partial_sort(candidates_.begin() + static_cast<std::ptrdiff_t>(sorted),
                          candidates_.begin() + static_cast<std::ptrdiff_t>(next),
                          candidates_.begin() + static_cast<std::ptrdiff_t>(count), better);
        sorted = next;
        grow *= 4;
      }
      mass += static_cast<double>(candidates_[kept].first);
      ++kept;
      if (mass >= target) break;
    }
    count = kept;
  }

  // Min-p: keep p >= min_p * p(best), i.e. weight >= min_p; the best always stays.
  if (params_.min_p > 0.0f) {
    const float floor = std::min(params_.min_p, 1.0f);
    size_t kept = 0;
    if (sorted >= count) {
      while (kept < count && candidates_[kept].first >= floor) ++kept;
    } else {
      for (size_t i = 0; i < count; ++i) {
        if (candidates_[i].first >= floor) candidates_[kept++] = candidates_[i];
      }
    }
    count = std::max<size_t>(kept, 1);
  }

  // Draw from the renormalized survivors.
  double total = 0.0;
  for (size_t i = 0; i < count; ++i) total += static_cast<double>(candidates_[i].first);
  const double threshold = uniform * total;
  double cumulative = 0.0;
  size_t chosen = count - 1;
  for (size_t i = 0; i < count; ++i) {
    cumulative += static_cast<double>(candidates_[i].first);
    if (threshold < cumulative) {
      chosen = i;
      break;
    }
  }
  return finish(candidates_[chosen].second);
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) {
  for (std::string& stop : stops) {
    if (!stop.empty()) stops_.push_back(std::move(stop));  // an empty stop string would match at once
  }
}

std::string StopStringMatcher::push(std::string_view text, bool& stopped) {
  stopped = false;
  held_ += text;

  // The earliest complete stop string. Any stop that began in text emitted earlier would have
  // kept that text held back, so searching what is held is enough.
  size_t first = std::string::npos;
  for (const std::string& stop : stops_) {
    const size_t at = held_.find(stop);
    if (at < first || (at == first && at != std::string::npos && stop.size() > matched_.size())) {
      first = at;
      matched_ = stop;
    }
  }
  if (first != std::string::npos) {
    stopped = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }

  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  const std::string_view held = held_;
  for (const std::string& stop : stops_) {
    for (size_t length = std::min(stop.size() - 1, held.size()); length > hold; --length) {
      if (held.substr(held.size() - length) == std::string_view(stop).substr(0, length)) {
        hold = length;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopStringMatcher::flush() {
  std::string out = std::move(held_);
  held_.clear();
  return out;
}

}  // namespace hearth::engine
