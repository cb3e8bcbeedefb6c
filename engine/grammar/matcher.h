// Token-level matching of a byte grammar (grammar.h): which tokens of a vocabulary may come next,
// and advancing on the token that was sampled.
//
// Design (learned from XGrammar, written for hearth):
//  - The matcher's state is a set of *persistent stacks*: a stack is a node (position, parent)
//    interned in a table, so stacks share their tails and a state is a short sorted list of node
//    ids. Every stack's top is a byte element; advancing by a byte pops and expands rules until
//    every top is a byte element again. Node 0 is the empty stack: the root rule has ended.
//  - The vocabulary is sorted by its bytes once (with each token's common-prefix length with the
//    one before), so a walk over it shares the work of common prefixes and skips every token
//    under a prefix that died — a token trie walked in order.
//  - *Context-independent tokens*: for the top few frames of a stack (their grammar positions,
//    kContextFrames of them), the tokens are classified once per compiled grammar by walking
//    from those frames alone, with an unknown rest of the stack below: accepted (it matches
//    without leaving them), rejected (it dies inside them), or uncertain (it leaves them with
//    bytes left, so the answer depends on the stack below). A mask is then the union of the
//    accepted sets of the state's stacks plus their uncertain tokens checked against the real
//    stacks, and a whole state's mask is cached per matcher (a string's characters, a number's
//    digits repeat a state).
//
// Threads: a CompiledGrammar and its matchers are used by one thread at a time (the sampler's).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/grammar/grammar.h"
#include "engine/token.h"

namespace hearth::engine::grammar {

// The bytes every token of a model's vocabulary decodes to, sorted for the walks. A token with
// no bytes (control and unused tokens, and any the caller wants kept out) is never allowed by a
// grammar; end-of-generation tokens are given to the CompiledGrammar separately.
class Vocabulary {
 public:
  explicit Vocabulary(std::vector<std::string> token_bytes);

  size_t size() const { return bytes_.size(); }
  const std::string& bytes(Token t) const { return bytes_[static_cast<size_t>(t)]; }
  // Tokens with bytes, sorted by their bytes; lcp[i]: bytes token sorted[i] shares with sorted[i-1].
  const std::vector<Token>& sorted() const { return sorted_; }
  const std::vector<uint32_t>& lcp() const { return lcp_; }
  size_t max_token_bytes() const { return max_bytes_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<Token> sorted_;
  std::vector<uint32_t> lcp_;
  size_t max_bytes_ = 0;
};

// One bit per vocabulary token.
class TokenMask {
 public:
  explicit TokenMask(size_t n_tokens = 0) : n_(n_tokens), words_((n_tokens + 63) / 64, 0) {}
  size_t size() const { return n_; }
  bool test(Token t) const { return (words_[static_cast<size_t>(t) >> 6] >> (t & 63)) & 1; }
  void set(Token t) { words_[static_cast<size_t>(t) >> 6] |= uint64_t{1} << (t & 63); }
  void clear() { std::fill(words_.begin(), words_.end(), 0); }
  void merge(const TokenMask& other) {
    for (size_t i = 0; i < words_.size(); ++i) words_[i] |= other.words_[i];
  }
  bool any() const {
    for (uint64_t w : words_) {
      if (w != 0) return true;
    }
    return false;
  }
  size_t count() const;
  // Sets every logit of a token the mask does not allow to -inf, and those past the mask's
  // tokens (an output head padded beyond the vocabulary); a mask longer than `logits` is cut.
  void apply(std::span<float> logits) const;
  const std::vector<uint64_t>& words() const { return words_; }

 private:
  size_t n_;
  std::vector<uint64_t> words_;
};

// Interned stack nodes; ids 0 and 1 are markers.
class StackTable {
 public:
  static constexpr uint32_t kEmpty = 0;     // the root rule ended: the grammar is complete
  static constexpr uint32_t kSentinel = 1;  // below a classification's start: the rule ended, context unknown
  struct Node {
    uint32_t pos;     // the element this frame matches next (a byte element for a top)
    uint32_t parent;  // the frame below
  };
  StackTable() { nodes_.resize(2, Node{0, 0}); }
  uint32_t get(uint32_t pos, uint32_t parent);
  const Node& node(uint32_t id) const { return nodes_[id]; }
  size_t size() const { return nodes_.size(); }

 private:
  std::vector<Node> nodes_;
  std::unordered_map<uint64_t, uint32_t> index_;
};

// A grammar bound to a vocabulary, with the per-position token classes computed as they are
// first needed. Shared (std::shared_ptr) by the matchers of every sequence with this grammar.
class CompiledGrammar {
 public:
  // `end_tokens`: the tokens that end generation; allowed exactly where the grammar may end
  // and never as text.
  CompiledGrammar(Grammar grammar, std::shared_ptr<const Vocabulary> vocabulary, std::vector<Token> end_tokens);

  const Grammar& grammar() const { return grammar_; }
  const Vocabulary& vocabulary() const { return *vocabulary_; }
  const std::vector<Token>& end_tokens() const { return end_tokens_; }
  bool is_end_token(Token t) const;

  // How many frames from a stack's top a token class is computed for. Deeper contexts leave
  // fewer uncertain tokens (a string's character rule ends after one byte; its string, member
  // and object rules are a few frames down) at the cost of more classes to compute.
  static constexpr size_t kContextFrames = 6;

  struct ContextTokens {
    TokenMask accepted;
    std::vector<Token> uncertain;     // in vocabulary order (sorted by bytes)
    std::vector<uint32_t> uncertain_lcp;
  };
  // The token classes for the top frames of stack `id` of `table` (computed on first use, then
  // shared by every stack with the same top kContextFrames positions). The reference is valid
  // until the next call: at kMaxContexts classes (each holds a mask of the vocabulary) the cache
  // starts again.
  static constexpr size_t kMaxContexts = 4096;
  const ContextTokens& context_tokens(const StackTable& table, uint32_t id);
  size_t classified_contexts() const { return classes_.size(); }
  double classify_seconds() const { return classify_seconds_; }
  // The key context_tokens() files stack `id` under: its top frames' positions, and whether the
  // whole stack fits in them.
  static std::string context_key(const StackTable& table, uint32_t id);

  // Expansion and one-byte steps over stack sets (sorted, unique ids of `table`).
  void expand(StackTable& table, uint32_t pos, uint32_t parent, std::vector<uint32_t>& out) const;
  void advance(StackTable& table, std::span<const uint32_t> stacks, uint8_t byte, std::vector<uint32_t>& out) const;

 private:
  static constexpr uint8_t kRejected = 0, kAccepted = 1, kUncertain = 2;
  const ContextTokens& classify(const std::string& key);
  // Classifies `tokens` (sorted by bytes, lcps[i] shared with the one before) from the stack
  // `start` of scratch_: one of kRejected / kAccepted / kUncertain each.
  void walk_tokens(uint32_t start, std::span<const Token> tokens, std::span<const uint32_t> lcps,
                   std::vector<uint8_t>& classes);

  Grammar grammar_;
  std::shared_ptr<const Vocabulary> vocabulary_;
  std::vector<Token> end_tokens_;  // sorted
  std::unordered_map<std::string, ContextTokens> classes_;
  double classify_seconds_ = 0;
  StackTable scratch_;  // the classification walks' stacks (their ids never leave)
};

// One sequence's place in a grammar. Its state is a pure function of the tokens accepted so far
// (nothing else is read), so a sequence replayed with the same tokens gets the same state.
class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<CompiledGrammar> grammar);

  // Advances on `token` and returns true, or returns false and stays where it was when the
  // grammar does not allow it. An end token is accepted only where the grammar may end, and
  // then the matcher is finished (nothing more is accepted).
  bool accept_token(Token token);
  // Advances on bytes (tests and tools); false (state unchanged) when they do not match.
  bool accept_bytes(std::string_view bytes);

  // The tokens that may come next. Where the grammar may end, the end tokens are included;
  // where nothing at all can follow (a grammar no token can continue), only the end tokens.
  void fill_mask(TokenMask& mask);

  bool can_end() const;       // the grammar may end here
  bool finished() const { return finished_; }  // an end token was accepted
  bool dead() const { return stacks_.empty(); }
  const CompiledGrammar& compiled() const { return *grammar_; }

 private:
  // Sets in `mask` the uncertain tokens of `classes` whose bytes the real stacks `start` accept.
  void check_uncertain(std::span<const uint32_t> start, const CompiledGrammar::ContextTokens& classes, TokenMask& mask);

  std::shared_ptr<CompiledGrammar> grammar_;
  StackTable table_;
  std::vector<uint32_t> stacks_;  // the state: sorted, unique
  bool finished_ = false;
  std::vector<std::vector<uint32_t>> levels_;  // walk scratch, one stack set per byte depth
  std::unordered_map<std::string, TokenMask> mask_cache_;  // state (its ids' bytes) -> mask
};

}  // namespace hearth::engine::grammar
