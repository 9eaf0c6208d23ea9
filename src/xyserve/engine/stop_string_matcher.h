// Stop strings over streamed text, with hold-back: text that could still be the start of a stop
// string is held until the next piece decides it, so a stop string is never partly emitted,
// even when it spans several tokens. The stop string and what follows it are dropped (the
// OpenAI API's behaviour).
//
// Why it is enough to search the held text plus the new piece: an occurrence that ends in the
// new piece starts either in it or in text that, when it arrived, was a suffix equal to a
// prefix of that stop string, and the longest such suffix is what is held.
//
// Not thread-safe; one per request stream.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace xy::engine {

class StopStringMatcher {
 public:
  // Empty strings in `stops` are ignored.
  explicit StopStringMatcher(std::vector<std::string> stops = {});

  // Feeds the next piece of text; returns what is safe to emit now. After a stop string
  // completes, stopped() is true, the text before it has been returned, and later pushes
  // return nothing.
  std::string push(std::string_view text);
  // End of the stream without a stop string: the held text.
  std::string flush();
  bool stopped() const { return stopped_; }
  // The stop string that matched (the earliest in the text; the first listed on a tie), once
  // stopped(); vLLM reports it as the choice's stop_reason.
  const std::string& matched() const { return matched_; }
  bool active() const { return !stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace xy::engine
