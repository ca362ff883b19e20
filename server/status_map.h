// server/status_map.h — the one place where engine statuses become gRPC statuses
// (server/README.md, Status codes: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
// CANCELLED, UNAUTHENTICATED, UNAVAILABLE, INTERNAL). Tested by tests/server_e2e_test.cc.
#ifndef SPECMOE_SERVER_STATUS_MAP_H_
#define SPECMOE_SERVER_STATUS_MAP_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace specmoe::server {

// Same code and message; codes the wire contract does not use become INTERNAL.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace specmoe::server

#endif  // SPECMOE_SERVER_STATUS_MAP_H_
