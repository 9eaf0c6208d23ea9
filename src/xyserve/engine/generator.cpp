#include "xyserve/engine/generator.h"

#include <algorithm>
#include <random>

#include "xyserve/backend/cpu/sampler.h"
#include "xyserve/common/check.h"

namespace xy::engine {

Generator::Generator(backend::Backend& backend, const tokenizer::Tokenizer& tokenizer,
                     std::vector<int32_t> eos_token_ids)
    : backend_(backend), tokenizer_(tokenizer), eos_token_ids_(std::move(eos_token_ids)) {}

GenerateResult Generator::generate(const std::vector<int32_t>& prompt_ids,
                                   const GenerateOptions& options,
                                   const std::function<void(const std::string&)>& on_text) {
  if (prompt_ids.empty()) throw InvalidArgument("the prompt is empty");
  if (options.max_tokens <= 0) throw InvalidArgument("max_tokens must be at least 1");
  const int32_t block_size = backend_.block_size();
  const int64_t total = int64_t(prompt_ids.size()) + options.max_tokens;
  const int64_t blocks_needed = (total + block_size - 1) / block_size;
  if (blocks_needed > backend_.num_kv_blocks())
    throw InvalidArgument(cat("prompt (", prompt_ids.size(), " tokens) + max_tokens (",
                              options.max_tokens, ") needs ", blocks_needed,
                              " KV blocks; the cache has ", backend_.num_kv_blocks()));

  // One request owns the whole cache: its block table is simply 0, 1, 2, ...
  meta::ScheduledRequest request;
  request.request_id = 0;
  request.block_table.resize(size_t(blocks_needed));
  for (int32_t i = 0; i < int32_t(blocks_needed); ++i) request.block_table[size_t(i)] = i;

  std::mt19937_64 rng(options.sampling.seed.value_or(std::random_device{}()));
  tokenizer::IncrementalDetokenizer detok(tokenizer_, /*skip_special_tokens=*/true, prompt_ids);
  GenerateResult result;
  std::vector<int32_t> tokens = prompt_ids;
  const int32_t chunk = options.prefill_chunk > 0 ? options.prefill_chunk : int32_t(tokens.size());

  int32_t num_computed = 0;
  while (true) {
    // Feed whatever is not yet in the KV cache: the prompt in chunks, then one token a step.
    const int32_t pending = int32_t(tokens.size()) - num_computed;
    const int32_t num_new = std::min(pending, chunk);
    meta::StepPlan plan;
    plan.block_size = block_size;
    for (int32_t i = 0; i < num_new; ++i) {
      plan.token_ids.push_back(tokens[size_t(num_computed + i)]);
      plan.positions.push_back(num_computed + i);
    }
    request.num_computed_tokens = num_computed;
    request.num_new_tokens = num_new;
    request.first_row = 0;
    request.num_logits_rows = (num_new == pending) ? 1 : 0;
    plan.requests = {request};
    backend_.forward(plan, logits_);
    num_computed += num_new;
    if (request.num_logits_rows == 0) continue;

    const std::span<const int32_t> prompt(prompt_ids);
    const std::span<const int32_t> output(result.output_ids);
    const backend::cpu::SampleResult s =
        backend::cpu::sample(logits_, options.sampling, prompt, output, rng);
    result.output_ids.push_back(s.token);
    result.logprobs.push_back(s.logprob);
    tokens.push_back(s.token);

    const bool is_eos = !options.ignore_eos && std::find(eos_token_ids_.begin(), eos_token_ids_.end(),
                                                         s.token) != eos_token_ids_.end();
    const bool is_stop = std::find(options.stop_token_ids.begin(), options.stop_token_ids.end(),
                                   s.token) != options.stop_token_ids.end();
    if (!is_eos && !is_stop) {
      std::string piece = detok.push(s.token);
      if (!piece.empty()) {
        result.text += piece;
        if (on_text) on_text(piece);
      }
    }
    if (is_eos || is_stop) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    if (int32_t(result.output_ids.size()) >= options.max_tokens) {
      result.finish_reason = FinishReason::kLength;
      break;
    }
  }
  std::string rest = detok.flush();
  if (!rest.empty()) {
    result.text += rest;
    if (on_text) on_text(rest);
  }
  return result;
}

}  // namespace xy::engine
