// Reads the generation fields that /v1/completions and /v1/chat/completions share (sampling,
// stop, n, stream, ...). Internal to the request parsers.
#pragma once

#include "xyserve/server/openai_fields.h"
#include "xyserve/server/openai_request.h"

namespace xy::server {

// Everything in GenerationOptions except max_tokens and logprobs, whose names and forms differ
// between the endpoints.
GenerationOptions read_generation_options(const Json& body, const RequestLimits& limits);

// A token id: an integer in [0, 2^31) and below limits.vocab_size when that is set.
int32_t read_token_id(const Json& value, const std::string& param, const RequestLimits& limits);

// `model`: a string, "" when absent.
std::string read_model(const Json& body);

// response_format: {"type": "text"} only; json_object / json_schema need guided decoding,
// which is not implemented, so they fail loudly rather than return unconstrained text.
void check_response_format(const Json& body);

}  // namespace xy::server
