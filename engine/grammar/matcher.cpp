#include "engine/grammar/matcher.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace hearth::engine::grammar {
namespace {

constexpr size_t kMaskCacheEntries = 128;  // states whose masks a matcher keeps

bool contains_marker(std::span<const uint32_t> stacks, uint32_t marker) {
  // Sorted, and the markers are the two smallest ids.
  for (uint32_t id : stacks) {
    if (id == marker) return true;
    if (id > StackTable::kSentinel) break;
  }
  return false;
}

uint32_t common_prefix(const std::string& a, const std::string& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return static_cast<uint32_t>(i);
}

}  // namespace

Vocabulary::Vocabulary(std::vector<std::string> token_bytes) : bytes_(std::move(token_bytes)) {
  HEARTH_CHECK(bytes_.size() < static_cast<size_t>(std::numeric_limits<Token>::max()));
  for (size_t t = 0; t < bytes_.size(); ++t) {
    if (!bytes_[t].empty()) sorted_.push_back(static_cast<Token>(t));
    max_bytes_ = std::max(max_bytes_, bytes_[t].size());
  }
  std::sort(sorted_.begin(), sorted_.end(), [&](Token a, Token b) {
    const int c = bytes(a).compare(bytes(b));
    return c < 0 || (c == 0 && a < b);
  });
  lcp_.resize(sorted_.size(), 0);
  for (size_t i = 1; i < sorted_.size(); ++i) lcp_[i] = common_prefix(bytes(sorted_[i - 1]), bytes(sorted_[i]));
}

size_t TokenMask::count() const {
  size_t n = 0;
  for (uint64_t w : words_) n += static_cast<size_t>(std::popcount(w));
  return n;
}

void TokenMask::apply(std::span<float> logits) const {
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  const size_t n = std::min(n_, logits.size());
  for (size_t w = 0; w * 64 < n; ++w) {
    const uint64_t allowed = words_[w];
    if (allowed == ~uint64_t{0}) continue;
    const size_t base = w * 64;
    const size_t end = std::min(n, base + 64);
    for (size_t i = base; i < end; ++i) {
      if (((allowed >> (i - base)) & 1) == 0) logits[i] = kMinusInf;
    }
  }
  // Rows of the output head beyond the vocabulary (padding) are never tokens of the grammar.
  for (size_t i = n; i < logits.size(); ++i) logits[i] = kMinusInf;
}

uint32_t StackTable::get(uint32_t pos, uint32_t parent) {
  const uint64_t key = (uint64_t{pos} << 32) | parent;
  auto [it, inserted] = index_.emplace(key, static_cast<uint32_t>(nodes_.size()));
  if (inserted) {
    HEARTH_CHECK(nodes_.size() < std::numeric_limits<uint32_t>::max());
    nodes_.push_back({pos, parent});
  }
  return it->second;
}

// ---------------------------------------------------------------------------------------------
// CompiledGrammar

CompiledGrammar::CompiledGrammar(Grammar grammar, std::shared_ptr<const Vocabulary> vocabulary,
                                 std::vector<Token> end_tokens)
    : grammar_(std::move(grammar)), vocabulary_(std::move(vocabulary)), end_tokens_(std::move(end_tokens)) {
  HEARTH_CHECK(vocabulary_ != nullptr);
  std::sort(end_tokens_.begin(), end_tokens_.end());
  end_tokens_.erase(std::unique(end_tokens_.begin(), end_tokens_.end()), end_tokens_.end());
  std::erase_if(end_tokens_, [&](Token t) { return t < 0 || static_cast<size_t>(t) >= vocabulary_->size(); });
}

bool CompiledGrammar::is_end_token(Token t) const { return std::binary_search(end_tokens_.begin(), end_tokens_.end(), t); }

void CompiledGrammar::expand(StackTable& table, uint32_t pos, uint32_t parent, std::vector<uint32_t>& out) const {
  const Element& e = grammar_.elements[pos];
  switch (e.kind) {
    case Element::kBytes:
      out.push_back(table.get(pos, parent));
      return;
    case Element::kEnd:
      if (parent == StackTable::kEmpty || parent == StackTable::kSentinel) {
        out.push_back(parent);
      } else {
        const StackTable::Node below = table.node(parent);
        expand(table, below.pos, below.parent, out);
      }
      return;
    case Element::kRule: {
      // A call in tail position returns straight to the frame below, so `x*` loops keep a
      // constant stack (and a repeating state).
      const uint32_t ret = grammar_.elements[pos + 1].kind == Element::kEnd ? parent : table.get(pos + 1, parent);
      for (uint32_t alt : grammar_.alternatives[e.value]) expand(table, alt, ret, out);
      return;
    }
  }
}

void CompiledGrammar::advance(StackTable& table, std::span<const uint32_t> stacks, uint8_t byte,
                              std::vector<uint32_t>& out) const {
  out.clear();
  for (uint32_t id : stacks) {
    if (id <= StackTable::kSentinel) continue;  // markers consume nothing
    const StackTable::Node n = table.node(id);
    if (grammar_.byte_sets[grammar_.elements[n.pos].value].test(byte)) expand(table, n.pos + 1, n.parent, out);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

std::string CompiledGrammar::context_key(const StackTable& table, uint32_t id) {
  std::string key;
  size_t frames = 0;
  for (; id > StackTable::kSentinel && frames < kContextFrames; ++frames) {
    const StackTable::Node n = table.node(id);
    key.append(reinterpret_cast<const char*>(&n.pos), sizeof(n.pos));
    id = n.parent;
  }
  key.push_back(id == StackTable::kEmpty ? 'E' : 'S');  // the whole stack, or more below
  return key;
}

void CompiledGrammar::walk_tokens(uint32_t start, std::span<const Token> tokens, std::span<const uint32_t> lcps,
                                  std::vector<uint8_t>& classes) {
  const Vocabulary& vocab = *vocabulary_;
  classes.assign(tokens.size(), kRejected);
  const size_t max_depth = vocab.max_token_bytes();
  std::vector<std::vector<uint32_t>> levels(max_depth + 1);
  std::vector<uint8_t> exited(max_depth + 1, 0);  // exited[d]: the frames ended after k <= d bytes
  levels[0] = {start};
  constexpr size_t kAlive = std::numeric_limits<size_t>::max();
  size_t built = 0;         // levels[0..built] hold the previous token's prefix
  size_t dead_at = kAlive;  // the previous token's first empty level
  uint8_t cls = kRejected;  // the previous token's class
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& b = vocab.bytes(tokens[i]);
    const size_t common = lcps[i];
    if (dead_at == kAlive || common < dead_at) {
      // Walk on from the deepest level this token shares with the previous one.
      size_t d = std::min(common, built);
      dead_at = kAlive;
      while (d < b.size()) {
        advance(scratch_, levels[d], static_cast<uint8_t>(b[d]), levels[d + 1]);
        exited[d + 1] = exited[d] || contains_marker(levels[d + 1], StackTable::kSentinel);
        ++d;
        if (levels[d].empty()) {
          dead_at = d;
          break;
        }
      }
      built = d;
      cls = dead_at == kAlive ? kAccepted : exited[dead_at - 1] ? kUncertain : kRejected;
    }
    // else: a prefix of this token already died; it shares that token's class.
    classes[i] = cls;
    if (dead_at != kAlive && i + 1 < tokens.size() && lcps[i + 1] >= dead_at) {
      // Every following token under the dead prefix (a contiguous run of the sorted list) shares
      // this class: find the run's end by binary search rather than one by one.
      const std::string_view prefix = std::string_view(b).substr(0, dead_at);
      size_t lo = i + 1, hi = tokens.size();  // tokens[lo] is under the prefix; tokens[hi] is not
      while (hi - lo > 1) {
        const size_t mid = lo + (hi - lo) / 2;
        if (std::string_view(vocab.bytes(tokens[mid])).substr(0, dead_at) == prefix) {
          lo = mid;
        } else {
          hi = mid;
        }
      }
      std::fill(classes.begin() + static_cast<std::ptrdiff_t>(i + 1), classes.begin() + static_cast<std::ptrdiff_t>(hi), cls);
      i = hi - 1;
    }
  }
}

const CompiledGrammar::ContextTokens& CompiledGrammar::context_tokens(const StackTable& table, uint32_t id) {
  // Bounded memory: no reference into the cache is held across calls (classify's own recursion
  // runs inside this one).
  if (classes_.size() >= kMaxContexts) classes_.clear();
  return classify(context_key(table, id));
}

const CompiledGrammar::ContextTokens& CompiledGrammar::classify(const std::string& key) {
  if (auto it = classes_.find(key); it != classes_.end()) return it->second;
  std::vector<uint32_t> positions;
  for (size_t at = 0; at + sizeof(uint32_t) < key.size(); at += sizeof(uint32_t)) {
    uint32_t pos;
    std::memcpy(&pos, key.data() + at, sizeof(pos));
    positions.push_back(pos);
  }
  HEARTH_CHECK(!positions.empty() && grammar_.elements[positions[0]].kind == Element::kBytes, "not a stack top");
  const bool whole = key.back() == 'E';
  // A context of k frames refines the one of its top k - 1 frames (or, for a whole stack of one
  // frame, the same frame with more below): a token accepted or rejected there is so here too,
  // so only that context's uncertain tokens are walked again. The big walks (every token in a
  // string's character rule) are then shared by every context they sit in.
  const ContextTokens* coarser = nullptr;
  if (positions.size() > 1 || whole) {
    const size_t frames = positions.size() > 1 ? positions.size() - 1 : 1;
    coarser = &classify(key.substr(0, frames * sizeof(uint32_t)) + 'S');
  }
  const auto started = std::chrono::steady_clock::now();
  const Vocabulary& vocab = *vocabulary_;
  ContextTokens pt{TokenMask(vocab.size()), {}, {}};
  scratch_ = StackTable();
  uint32_t start = whole ? StackTable::kEmpty : StackTable::kSentinel;
  for (size_t i = positions.size(); i-- > 0;) start = scratch_.get(positions[i], start);
  std::span<const Token> tokens = vocab.sorted();
  std::span<const uint32_t> lcps = vocab.lcp();
  if (coarser != nullptr) {
    pt.accepted = coarser->accepted;
    tokens = coarser->uncertain;
    lcps = coarser->uncertain_lcp;
  }
  std::vector<uint8_t> classes;
  walk_tokens(start, tokens, lcps, classes);
  const std::string* last_uncertain = nullptr;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const Token t = tokens[i];
    if (is_end_token(t)) continue;
    if (classes[i] == kAccepted) {
      pt.accepted.set(t);
    } else if (classes[i] == kUncertain) {
      const std::string& b = vocab.bytes(t);
      pt.uncertain_lcp.push_back(last_uncertain != nullptr ? common_prefix(*last_uncertain, b) : 0);
      pt.uncertain.push_back(t);
      last_uncertain = &b;
    }
  }
  classify_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return classes_.emplace(key, std::move(pt)).first->second;
}

// ---------------------------------------------------------------------------------------------
// GrammarMatcher

GrammarMatcher::GrammarMatcher(std::shared_ptr<CompiledGrammar> grammar) : grammar_(std::move(grammar)) {
  HEARTH_CHECK(grammar_ != nullptr);
  const Grammar& g = grammar_->grammar();
  for (uint32_t alt : g.alternatives[g.root]) grammar_->expand(table_, alt, StackTable::kEmpty, stacks_);
  std::sort(stacks_.begin(), stacks_.end());
  stacks_.erase(std::unique(stacks_.begin(), stacks_.end()), stacks_.end());
  levels_.resize(grammar_->vocabulary().max_token_bytes() + 1);
}

bool GrammarMatcher::can_end() const { return !finished_ && contains_marker(stacks_, StackTable::kEmpty); }

bool GrammarMatcher::accept_bytes(std::string_view bytes) {
  if (finished_) return false;
  std::vector<uint32_t> current = stacks_, next;
  for (char c : bytes) {
    grammar_->advance(table_, current, static_cast<uint8_t>(c), next);
    if (next.empty()) return false;
    current.swap(next);
  }
  stacks_ = std::move(current);
  return true;
}

bool GrammarMatcher::accept_token(Token token) {
  if (finished_ || token < 0 || static_cast<size_t>(token) >= grammar_->vocabulary().size()) return false;
  if (grammar_->is_end_token(token)) {
    if (!can_end()) return false;
    finished_ = true;
    return true;
  }
  const std::string& bytes = grammar_->vocabulary().bytes(token);
  if (bytes.empty()) return false;
  return accept_bytes(bytes);
}

void GrammarMatcher::check_uncertain(std::span<const uint32_t> start, const CompiledGrammar::ContextTokens& classes,
                                     TokenMask& mask) {
  const Vocabulary& vocab = grammar_->vocabulary();
  levels_[0].assign(start.begin(), start.end());
  constexpr size_t kAlive = std::numeric_limits<size_t>::max();
  size_t built = 0;
  size_t dead_at = kAlive;
  for (size_t i = 0; i < classes.uncertain.size(); ++i) {
    const Token t = classes.uncertain[i];
    const std::string& b = vocab.bytes(t);
    const size_t common = classes.uncertain_lcp[i];
    if (dead_at != kAlive && common >= dead_at) continue;  // under a dead prefix
    size_t d = std::min(common, built);
    dead_at = kAlive;
    while (d < b.size()) {
      grammar_->advance(table_, levels_[d], static_cast<uint8_t>(b[d]), levels_[d + 1]);
      ++d;
      if (levels_[d].empty()) {
        dead_at = d;
        break;
      }
    }
    built = d;
    if (dead_at == kAlive) mask.set(t);
  }
}

void GrammarMatcher::fill_mask(TokenMask& mask) {
  const size_t n_vocab = grammar_->vocabulary().size();
  if (mask.size() != n_vocab) mask = TokenMask(n_vocab);
  std::string key(reinterpret_cast<const char*>(stacks_.data()), stacks_.size() * sizeof(uint32_t));
  key.push_back(finished_ ? '\1' : '\0');
  if (auto it = mask_cache_.find(key); it != mask_cache_.end()) {
    mask = it->second;
    return;
  }
  mask.clear();
  if (!finished_) {
    // The stacks grouped by their context: one class lookup each.
    std::vector<std::pair<std::string, uint32_t>> contexts;  // (context key, stack)
    for (uint32_t id : stacks_) {
      if (id > StackTable::kSentinel) contexts.emplace_back(CompiledGrammar::context_key(table_, id), id);
    }
    std::sort(contexts.begin(), contexts.end());
    std::vector<uint32_t> group;
    for (size_t i = 0; i < contexts.size();) {
      const std::string& context = contexts[i].first;
      group.clear();
      size_t j = i;
      for (; j < contexts.size() && contexts[j].first == context; ++j) group.push_back(contexts[j].second);
      const CompiledGrammar::ContextTokens& classes = grammar_->context_tokens(table_, contexts[i].second);
      mask.merge(classes.accepted);
      if (!classes.uncertain.empty()) check_uncertain(group, classes, mask);
      i = j;
    }
    if (can_end() || !mask.any()) {
      for (Token t : grammar_->end_tokens()) mask.set(t);
    }
  }
  if (mask_cache_.size() >= kMaskCacheEntries) mask_cache_.clear();
  mask_cache_.emplace(std::move(key), mask);
}

}  // namespace hearth::engine::grammar
