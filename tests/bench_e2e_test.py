#!/usr/bin/env python3
"""e2e test of `specmoe-cli bench` against the real server on 127.0.0.1.

The JSON report parses; completed + failed = requested; latencies are positive and
ordered (p50 <= p90 <= p99); a dataset line over the server's --max-tokens-limit shows up
under INVALID_ARGUMENT at its position; --ab gives both arms with ratios; the sweep gives one
row per concurrency; an unreachable server is an error within the connect timeout; the Python
grpcio examples under client/python run as they are.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specmoe_e2e as e2e  # noqa: E402

OUTPUT_LEN = 10


class BenchE2eTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = e2e.Server()
        cls.tmp = tempfile.mkdtemp(prefix="specmoe_bench_test_")
        cls.dataset = os.path.join(cls.tmp, "prompts.jsonl")
        with open(cls.dataset, "w") as f:
            for prompt in ["In the beginning God", "And the LORD said", "The king of Israel",
                           "Blessed are the", "And it came to pass"]:
                f.write(json.dumps({"prompt": prompt}) + "\n")
            # The injected failure: over the server's --max-tokens-limit.
            f.write(json.dumps({"prompt": "Too long", "max_tokens": e2e.MAX_TOKENS_LIMIT + 1})
                    + "\n")

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0

    def bench(self, *args):
        report = os.path.join(self.tmp, f"report_{time.monotonic_ns()}.json")
        result = e2e.cli("bench", "--server", self.server.address, "--output-len",
                         str(OUTPUT_LEN), "--ignore-eos", "--json", report, *args)
        self.assertEqual(result.returncode, 0, result.stderr + self.server.log())
        with open(report) as f:
            return json.load(f), result.stdout

    def check_latencies(self, r, completed):
        self.assertEqual(r["completed"], completed)
        for metric in ("ttft", "tpot", "itl", "e2el"):
            p50, p90, p99 = (r[f"p{p}_{metric}_ms"] for p in (50, 90, 99))
            self.assertGreater(r[f"mean_{metric}_ms"], 0, metric)
            self.assertGreater(p50, 0, metric)
            self.assertEqual(r[f"median_{metric}_ms"], p50)
            self.assertLessEqual(p50, p90, metric)
            self.assertLessEqual(p90, p99, metric)
        self.assertLessEqual(r["p99_ttft_ms"], r["p99_e2el_ms"])
        self.assertGreater(r["request_throughput"], 0)
        self.assertGreater(r["output_throughput"], 0)

    def test_report_counts_latencies_and_injected_failure(self):
        r, table = self.bench("--dataset-path", self.dataset, "--num-requests", "6",
                              "--concurrency", "2", "--percentiles", "50,90,99,99.9",
                              "--slo", "ttft:60000,tpot:60000")
        self.assertEqual(r["num_prompts"], 6)
        self.assertEqual(r["completed"] + r["failed"], 6)
        self.assertEqual(r["failed"], 1)
        self.assertEqual(r["errors_by_code"], {"INVALID_ARGUMENT": 1})
        self.assertEqual(r["status_codes"], ["OK"] * 5 + ["INVALID_ARGUMENT"])
        self.assertIn("max_tokens", r["errors"][5])
        self.check_latencies(r, 5)
        self.assertIn("p99.9_ttft_ms", r)
        self.assertLessEqual(r["p99_ttft_ms"], r["p99.9_ttft_ms"])
        self.assertEqual(r["output_lens"][:5], [OUTPUT_LEN] * 5)
        self.assertEqual(r["total_output_tokens"], 5 * OUTPUT_LEN)
        self.assertEqual(sum(r["input_lens"]), r["total_input_tokens"])
        # ITL per chunk, TPOT per token: a chunk carries >= 1 token, so chunks <= tokens - 1.
        for itl, out in zip(r["itls"][:5], r["output_lens"][:5]):
            self.assertLessEqual(len(itl), out - 1)
        self.assertGreater(r["mean_tokens_per_step"], 1.0)
        self.assertGreater(r["total_drafted_tokens"], 0)
        self.assertEqual(len(r["acceptance_by_depth"]), 3)  # --tree 1,2,1
        # Goodput with SLOs every request meets equals the request throughput.
        self.assertAlmostEqual(r["request_goodput"], r["request_throughput"], places=6)
        self.assertIn("Successful requests:", table)
        self.assertIn("INVALID_ARGUMENT:", table)
        self.assertIn("P99.9 TTFT (ms):", table)

    def test_ab_gives_both_arms(self):
        r, table = self.bench("--dataset-path", self.dataset, "--num-requests", "4",
                              "--concurrency", "2", "--ab")
        on, off = r["spec_on"], r["spec_off"]
        for arm in (on, off):
            self.assertEqual(arm["completed"] + arm["failed"], 4)
            self.check_latencies(arm, 4)
        self.assertGreater(on["total_drafted_tokens"], 0)
        self.assertEqual(off["total_drafted_tokens"], 0)
        self.assertEqual(off["mean_tokens_per_step"], 0)
        # Greedy with --ignore-eos: the same requests give the same token counts.
        self.assertEqual(on["output_lens"], off["output_lens"])
        self.assertAlmostEqual(r["ratio"]["output_throughput"],
                               on["output_throughput"] / off["output_throughput"])
        self.assertIn("spec on", table)
        self.assertIn("spec off", table)
        self.assertIn("on/off", table)

    def test_sweep_random_prompts(self):
        r, table = self.bench("--dataset-name", "random", "--input-len", "7", "--num-requests",
                              "4", "--sweep-concurrency", "1,2", "--ab", "--seed", "5")
        self.assertEqual([e["max_concurrency"] for e in r["sweep"]], [1, 2])
        for entry in r["sweep"]:
            for arm in ("spec_on", "spec_off"):
                self.assertEqual(entry[arm]["input_lens"], [7] * 4)
                self.check_latencies(entry[arm], 4)
        self.assertEqual(len([l for l in table.splitlines() if l.strip()[:1].isdigit()]), 2)

    def test_shared_prefix_and_multi_turn_report_the_prefix_cache_hit_rate(self):
        # One at a time: every request after the first finds the 48-token prefix (3 blocks).
        r, table = self.bench("--dataset-name", "random", "--input-len", "5",
                              "--shared-prefix-tokens", "48", "--num-requests", "4",
                              "--concurrency", "1", "--seed", "3")
        self.assertEqual(r["input_lens"], [53] * 4)
        self.assertEqual(r["total_cached_prompt_tokens"], 3 * 48)
        self.assertAlmostEqual(r["prefix_cache_hit_rate"], 3 * 48 / (4 * 53))
        self.assertIn("Prefix cache hit rate:", table)
        # Two conversations of three turns: each turn resends the last one's prompt and reply.
        r, _ = self.bench("--dataset-path", self.dataset, "--num-requests", "2",
                          "--multi-turn", "3", "--concurrency", "2")
        self.assertEqual(r["completed"], 6)
        self.assertEqual(r["multi_turn"], 3)
        lens = r["input_lens"]
        for conversation in range(2):
            turns = lens[3 * conversation:3 * conversation + 3]
            self.assertGreater(turns[1], turns[0] + OUTPUT_LEN - 1)
            self.assertGreater(turns[2], turns[1] + OUTPUT_LEN - 1)
        self.assertGreater(r["total_cached_prompt_tokens"], 0)
        bad = e2e.cli("bench", "--server", self.server.address, "--multi-turn", "2", "--ab")
        self.assertEqual(bad.returncode, 2)
        self.assertIn("--multi-turn", bad.stderr)

    def test_poisson_rate_with_warmup(self):
        r, _ = self.bench("--dataset-path", self.dataset, "--num-requests", "5",
                          "--request-rate", "40", "--burstiness", "0.5", "--warmup", "2")
        self.assertEqual(r["completed"], 5)
        self.assertEqual(r["request_rate"], 40)
        self.assertIsNone(r["max_concurrency"])

    def test_unreachable_server_is_an_error_not_a_hang(self):
        start = time.time()
        result = e2e.cli("bench", "--server", "127.0.0.1:1", "--connect-timeout-ms", "1500",
                         timeout=30)
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot reach the server at 127.0.0.1:1", result.stderr)
        self.assertLess(time.time() - start, 15)

    def test_bad_dataset_line_is_named(self):
        bad = os.path.join(self.tmp, "bad.jsonl")
        with open(bad, "w") as f:
            f.write('{"prompt": "ok"}\n{"text": "no prompt"}\n')
        result = e2e.cli("bench", "--server", self.server.address, "--dataset-path", bad)
        self.assertEqual(result.returncode, 1)
        self.assertIn("bad.jsonl:2", result.stderr)

    def test_python_examples_run_as_they_are(self):
        """client/python: the grpcio completion example and the reflection listing."""
        python = "/usr/bin/python3"
        here = os.path.join(e2e.ROOT, "client", "python")
        done = subprocess.run([python, os.path.join(here, "complete.py"), "--server",
                               self.server.address, "--max-tokens", "6", "And God said"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("completion tokens", done.stderr)
        self.assertIn("FINISH_REASON_", done.stderr)
        self.assertTrue(done.stdout.strip())
        listing = subprocess.run([python, os.path.join(here, "reflection_list.py"), "--server",
                                  self.server.address], capture_output=True, text=True,
                                 timeout=120)
        self.assertEqual(listing.returncode, 0, listing.stderr)
        for line in ("service specmoe.v1.Completion",
                     "rpc CompleteStream(specmoe.v1.CompleteRequest) returns "
                     "(stream specmoe.v1.CompleteChunk)",
                     "rpc GetModelInfo(specmoe.v1.GetModelInfoRequest) returns "
                     "(specmoe.v1.ModelInfo)",
                     "service grpc.health.v1.Health"):
            self.assertIn(line, listing.stdout)


if __name__ == "__main__":
    unittest.main()
