// server/request_conversion.h — wire message -> engine request, field by field and nothing
// more (engine/README.md, One request end to end: the transport only converts;
// engine/serving/request_validator.h checks and applies the defaults, once). Shared by the service
// and tests/fuzz_request.cc.
#ifndef SPECMOE_SERVER_REQUEST_CONVERSION_H_
#define SPECMOE_SERVER_REQUEST_CONVERSION_H_

#include <string>

#include "engine/serving/request.h"
#include "specmoe/v1/completion.pb.h"

namespace specmoe::server {

// Copies every field; an empty request_id gets a fresh "cmpl-<process>-<n>" id. Values are
// kept as sent (zeros included) except that unsigned counts above INT32_MAX saturate.
engine::GenerationRequest ToGenerationRequest(const specmoe::v1::CompleteRequest& request);

// A fresh request id, unique within the process.
std::string NewRequestId();

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_REQUEST_CONVERSION_H_
