#!/usr/bin/env python3
"""e2e test of the Prometheus metrics and the JSON request log on the real server.

After a known workload the counters move by exactly what the responses say (requests by RPC
and code, prompt and generated tokens, drafted and accepted tokens = the sums of the
responses' SpeculationStats); `promtool check metrics` accepts the scrape; the metrics API
key is enforced; a real Prometheus (where installed) scrapes the server every second and
answers specmoe_requests_total through its HTTP API; with --log-format json every log line
is one JSON object and finished and refused requests carry their own fields.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specmoe_e2e as e2e  # noqa: E402
from specmoe_e2e import value  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MetricsE2eTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="specmoe_metrics_test_")
        cls.key_file = os.path.join(cls.tmp, "metrics.key")
        with open(cls.key_file, "w") as f:
            f.write("scrape-secret\n")
        cls.server = e2e.Server("--log-format", "json", "--metrics-api-key-file", cls.key_file)

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0
        # Every line of a JSON-format log is one JSON object (normal and refused requests
        # included; checked here, after the whole suite's traffic).
        for line in cls.server.log().splitlines():
            json.loads(line)

    def scrape(self):
        return e2e.parse_metrics(self.server.scrape("scrape-secret"))

    def test_counters_move_by_exactly_the_workload(self):
        before = self.scrape()
        addr = ["--server", self.server.address]
        responses = []
        for prompt in ["In the beginning", "And the LORD", "The king said"]:
            responses += e2e.cli_json_lines("complete", *addr, "--max-tokens", "9",
                                            "--ignore-eos", prompt)
        responses += e2e.cli_json_lines("complete", *addr, "--max-tokens", "6",
                                        "--no-speculation", "Blessed are")
        streamed = []
        for prompt in ["And it came to pass", "Hear, O Israel"]:
            chunks = e2e.cli_json_lines("stream", *addr, "--max-tokens", "7", prompt)
            streamed.append(chunks[-1])
        refused = e2e.cli("complete", *addr, "--max-tokens", str(e2e.MAX_TOKENS_LIMIT + 1), "x")
        self.assertEqual(refused.returncode, 1)
        self.assertIn("INVALID_ARGUMENT", refused.stderr)
        self.assertEqual(e2e.cli("info", *addr).returncode, 0)
        bench = e2e.cli("bench", *addr, "--num-requests", "3", "--output-len", "5")
        self.assertEqual(bench.returncode, 0, bench.stderr)
        after = self.scrape()

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(delta("specmoe_requests_total", rpc="Complete", code="OK"), 4)
        self.assertEqual(delta("specmoe_requests_total", rpc="Complete",
                               code="INVALID_ARGUMENT"), 1)
        self.assertEqual(delta("specmoe_requests_total", rpc="CompleteStream", code="OK"), 2 + 3)
        # bench asks GetModelInfo once before its requests.
        self.assertEqual(delta("specmoe_requests_total", rpc="GetModelInfo", code="OK"), 2)
        # The bench's requests: the counters move by the report's totals.
        bench_before = after
        report = os.path.join(self.tmp, "bench.json")
        bench = e2e.cli("bench", *addr, "--num-requests", "3", "--output-len", "5",
                        "--json", report)
        self.assertEqual(bench.returncode, 0, bench.stderr)
        bench_after = self.scrape()
        with open(report) as f:
            r = json.load(f)

        def bench_delta(name):
            return value(bench_after, name) - value(bench_before, name)

        self.assertEqual(bench_delta("specmoe_generation_tokens_total"), r["total_output_tokens"])
        self.assertEqual(bench_delta("specmoe_prompt_tokens_total"), r["total_input_tokens"])
        # The prefix cache (on by default) looked up every prompt once.
        self.assertEqual(bench_delta("specmoe_prefix_cache_queries_total"),
                         r["total_input_tokens"])
        self.assertEqual(bench_delta("specmoe_prefix_cache_hits_total"),
                         r["total_cached_prompt_tokens"])
        self.assertEqual(bench_delta("specmoe_drafted_tokens_total"), r["total_drafted_tokens"])
        self.assertEqual(bench_delta("specmoe_accepted_tokens_total"),
                         r["total_accepted_tokens"])

        def total(field, group):
            return sum(int(f.get(group, {}).get(field, 0)) for f in finals)

        # The CLI's responses alone: every counter equals the sum over the responses.
        before = self.scrape()
        finals = []
        for prompt in ["In the beginning", "And the LORD"]:
            finals += e2e.cli_json_lines("complete", *addr, "--max-tokens", "9",
                                         "--ignore-eos", prompt)
        chunks = e2e.cli_json_lines("stream", *addr, "--max-tokens", "7", "Hear, O Israel")
        finals.append(chunks[-1])
        after = self.scrape()
        self.assertEqual(delta("specmoe_generation_tokens_total"),
                         total("completion_tokens", "usage"))
        self.assertEqual(delta("specmoe_generation_tokens_total"),
                         sum(len(f["token_ids"]) for f in finals[:2]) +
                         sum(len(c["token_ids"]) for c in chunks))
        self.assertEqual(delta("specmoe_prompt_tokens_total"), total("prompt_tokens", "usage"))
        self.assertEqual(delta("specmoe_prefix_cache_queries_total"),
                         total("prompt_tokens", "usage"))
        self.assertEqual(delta("specmoe_prefix_cache_hits_total"),
                         total("cached_prompt_tokens", "usage"))
        self.assertEqual(delta("specmoe_drafted_tokens_total"),
                         total("drafted_tokens", "speculation"))
        self.assertEqual(delta("specmoe_accepted_tokens_total"),
                         total("accepted_tokens", "speculation"))
        self.assertGreater(delta("specmoe_drafted_tokens_total"), 0)
        self.assertEqual(delta("specmoe_verify_steps_total"), total("verify_steps", "speculation"))
        self.assertEqual(delta("specmoe_time_to_first_token_seconds_count"), 3)
        self.assertEqual(delta("specmoe_request_duration_seconds_count"), 3)
        self.assertEqual(delta("specmoe_queue_wait_seconds_count"), 3)
        self.assertEqual(delta("specmoe_step_duration_seconds_count", phase="target"),
                         total("verify_steps", "speculation"))
        self.assertEqual(delta("specmoe_tree_tokens_per_step_count"),
                         total("verify_steps", "speculation"))
        # Idle again: nothing queued or running, every KV block free.
        self.assertEqual(value(after, "specmoe_queue_depth"), 0)
        self.assertEqual(value(after, "specmoe_running_requests"), 0)
        self.assertEqual(value(after, "specmoe_preempted_requests"), 0)
        self.assertEqual(value(after, "specmoe_kv_cache_used_blocks"), 0)
        self.assertGreater(value(after, "specmoe_kv_cache_free_blocks"), 0)

    def test_promtool_accepts_the_scrape(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool missing: deploy/setup.sh installs prometheus")
        e2e.cli_json_lines("complete", "--server", self.server.address, "--max-tokens", "4",
                           "Hello")
        text = self.server.scrape("scrape-secret")
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                                text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout + result.stderr, "")  # not even a lint warning

    def test_metrics_api_key_is_required(self):
        for key in (None, "wrong"):
            with self.assertRaises(urllib.error.HTTPError) as raised:
                self.server.scrape(key)
            self.assertEqual(raised.exception.code, 401)
        self.assertIn("specmoe_requests_total", self.server.scrape("scrape-secret"))

    def test_json_log_lines_have_own_fields(self):
        addr = ["--server", self.server.address]
        response = e2e.cli_json_lines("complete", *addr, "--max-tokens", "5", "--ignore-eos",
                                      "And God said")[0]
        refused = e2e.cli("complete", *addr, "--temperature", "-1", "x")
        self.assertEqual(refused.returncode, 1)
        deadline = time.time() + 10
        finished = refusal = None
        while time.time() < deadline and (finished is None or refusal is None):
            lines = [json.loads(line) for line in self.server.log().splitlines()]
            for line in lines:
                if line.get("request_id") == response["request_id"]:
                    finished = line
                if line.get("refused") and "temperature" in line.get("error", ""):
                    refusal = line
            time.sleep(0.05)
        self.assertIsNotNone(finished, self.server.log())
        self.assertTrue(finished["msg"].startswith("rpc=Complete "), finished["msg"])
        self.assertEqual(finished["rpc"], "Complete")
        self.assertEqual(finished["status"], "OK")
        self.assertTrue(finished["peer"].startswith("ipv4:127.0.0.1:"), finished["peer"])
        self.assertEqual(finished["completion_tokens"], 5)
        self.assertEqual(finished["prompt_tokens"], response["usage"]["prompt_tokens"])
        self.assertEqual(finished["drafted_tokens"], response["speculation"]["drafted_tokens"])
        self.assertEqual(finished["accepted_tokens"], response["speculation"]["accepted_tokens"])
        self.assertGreater(finished["ttft_ms"], 0)
        self.assertGreater(finished["tokens_per_s"], 0)
        self.assertIn("mean_tokens_per_step", finished)
        self.assertIsInstance(finished["acceptance_by_depth"], list)
        self.assertIsNotNone(refusal, self.server.log())
        self.assertIn("refused code=INVALID_ARGUMENT", refusal["msg"])
        self.assertTrue(refusal["request_id"])  # the server's id for a request without one
        self.assertEqual(refusal["status"], "INVALID_ARGUMENT")
        self.assertEqual(refusal["rpc"], "Complete")
        self.assertTrue(refusal["peer"].startswith("ipv4:127.0.0.1:"))
        self.assertEqual(refusal["level"], "warning")

    def test_bare_port_is_the_loopback_and_bad_address_is_refused(self):
        server = e2e.Server("--metrics-listen", "0")  # the last --metrics-listen wins
        try:
            self.assertIn("specmoe_requests_total", server.scrape())
        finally:
            self.assertEqual(server.stop(), 0)
        bad = subprocess.run([e2e.SERVER, "--target", e2e.TARGET, "--listen", "127.0.0.1:0",
                              "--metrics-listen", "127.0.0.1:notaport"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("--metrics-listen: '127.0.0.1:notaport' is not HOST:PORT or PORT",
                      bad.stdout + bad.stderr)

    def test_real_prometheus_scrapes_the_server(self):
        prometheus = shutil.which("prometheus")
        if prometheus is None:
            self.skipTest("the prometheus binary is absent (Debian package prometheus, "
                          "installed by deploy/setup.sh)")
        key_copy = os.path.join(self.tmp, "prometheus.key")
        shutil.copy(self.key_file, key_copy)
        config = os.path.join(self.tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: specmoe\n"
                    "    authorization:\n      credentials_file: " + key_copy + "\n"
                    "    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.server.metrics_port}']\n")
        e2e.cli_json_lines("complete", "--server", self.server.address, "--max-tokens", "3", "Hi")
        web = free_port()
        log = open(os.path.join(self.tmp, "prometheus.log"), "w")
        process = subprocess.Popen(
            [prometheus, "--config.file", config, "--storage.tsdb.path",
             os.path.join(self.tmp, "tsdb"), "--web.listen-address", f"127.0.0.1:{web}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            query = urllib.parse.urlencode(
                {"query": 'specmoe_requests_total{rpc="Complete",code="OK"}'})
            url = f"http://127.0.0.1:{web}/api/v1/query?{query}"
            deadline = time.time() + 90
            result = []
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        body = json.load(response)
                    result = body["data"]["result"]
                    if result:
                        break
                except (urllib.error.URLError, ConnectionError):
                    pass
                time.sleep(0.5)
            self.assertTrue(result, "Prometheus never returned specmoe_requests_total")
            sample = result[0]
            self.assertEqual(sample["metric"]["job"], "specmoe")
            self.assertGreaterEqual(float(sample["value"][1]), 1)
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    unittest.main()
