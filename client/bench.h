// client/bench.h — `specmoe-cli bench`: the load tester (client/README.md), modelled on
// `vllm bench serve` (load shapes, metrics and result field names) and ghz (gRPC habits).
// N streaming CompleteStream calls from a dataset (JSONL prompts, ShareGPT JSON, random token
// prompts), at a fixed concurrency or a Poisson/gamma arrival rate, after a warm-up; per
// request TTFT, inter-token gaps, TPOT, end-to-end latency, tokens, status and speculation
// statistics and the prefix cache's hit rate; shared-prefix and multi-turn workloads; a report
// as a table on stdout and as JSON. `--backend openai` sends the same workload as streamed
// POST /v1/completions to any OpenAI-compatible server (specmoe's HTTP front, vLLM,
// llama.cpp's llama-server). Tested by tests/bench_e2e_test.py and tests/http_e2e_test.py.
#ifndef SPECMOE_CLIENT_BENCH_H_
#define SPECMOE_CLIENT_BENCH_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "specmoe/v1/completion.grpc.pb.h"

namespace specmoe::client {

// Every flag of the bench subcommand. Plain value type.
struct BenchOptions {
  int num_requests = 32;            // --num-requests
  int concurrency = 0;              // --concurrency (0: 1 without a rate, unbounded with one)
  double request_rate = 0;          // --request-rate R per second, Poisson (0: all at once)
  double burstiness = 1.0;          // --burstiness (gamma shape; 1 = Poisson)
  int warmup = 0;                   // --warmup N requests, not measured
  uint64_t seed = 0;                // --seed (dataset order, random prompts, arrival gaps)
  std::string dataset_name = "jsonl";  // --dataset-name jsonl|sharegpt|random
  std::string dataset_path;         // --dataset-path (jsonl default: the shipped prompts)
  int input_len = 32;               // --input-len (random prompts)
  int output_len = 32;              // --output-len (max_tokens when the dataset gives none)
  int shared_prefix_tokens = 0;     // --shared-prefix-tokens N: every prompt starts with them
  int multi_turn = 1;               // --multi-turn T: each request is a T-turn conversation
  bool ignore_eos = false;          // --ignore-eos
  float temperature = 0.0f;         // --temperature
  std::vector<uint32_t> tree;       // --tree (empty: the server's)
  bool no_speculation = false;      // --no-speculation
  int logprobs = -1;                // --logprobs N: ask for logprobs + N alternatives (-1: off)
  std::vector<double> percentiles = {50, 90, 99};  // --percentiles
  std::map<std::string, double> slo_ms;  // --slo ttft:200,tpot:50,e2el:5000
  bool ab = false;                  // --ab
  std::vector<int> sweep_concurrency;  // --sweep-concurrency 1,2,4
  std::string json_path;            // --json FILE
  std::string plot_path;            // --plot FILE.png
  int64_t timeout_ms = 0;           // --timeout-ms per request (0: none)
  int64_t connect_timeout_ms = 5000;  // how long to wait for the server to answer at all
  std::string server;               // for the report
  std::string backend = "specmoe";  // --backend specmoe|openai
  std::string base_url;             // --base-url http(s)://HOST:PORT/v1 (openai)
  std::string model;                // --model (openai; default: the first of /v1/models)
  std::string tls_ca;               // --tls-ca (openai over https)
};

// Parses "ttft:200,tpot:50" (milliseconds; keys ttft, tpot, itl, e2el). Returns "" or an error.
std::string ParseSlo(const std::string& text, std::map<std::string, double>* slo);

// Runs the benchmark on `channel` (the openai backend: on options.base_url instead);
// `api_key` empty: no authorization metadata. Prints the
// table on stdout, progress on stderr (a terminal only), errors on stderr. Returns the exit
// code: 0 when the benchmark ran (failed requests are part of the report), 1 when the server
// cannot be reached or the dataset cannot be read, 2 for inconsistent flags.
int RunBench(const BenchOptions& options, std::shared_ptr<grpc::Channel> channel,
             const std::string& api_key);

// The canonical name of a gRPC status code ("INVALID_ARGUMENT"; "UNKNOWN" out of range): the
// CLI's error lines and the benchmark's report.
const char* CodeName(grpc::StatusCode code);

}  // namespace specmoe::client

#endif  // SPECMOE_CLIENT_BENCH_H_
