#!/usr/bin/env python3
"""e2e test of the OpenAI-compatible HTTP front with the official `openai` client.

Runs with the tools venv's python (deploy/setup.sh installs `openai` there) against the real
specmoe-server on 127.0.0.1 (gRPC and --http-listen on free ports, the committed fixture
pair). Checks: /v1/models and /health; completions and chat, unary and streamed, with
include_usage, n (choice i = the single request with seed + i), echo and stop strings; a
greedy request's tokens over HTTP equal those over gRPC (specmoe-cli) and, unary or streamed,
equal each other; chat with the raw template equals the completion of the same text; a wrong
key is AuthenticationError and /health stays open; invalid or unsupported parameters are
BadRequestError naming the parameter (top_logprobs 21, logprobs 21); logprobs over
HTTP (completions and chat forms, unary and per streamed chunk) equal gRPC's for the same
greedy request; echo with logprobs scores the prompt (max_tokens 0: the prompt alone; every
prompt token's entry, the first null, equals the first generated token's of a greedy request
for the tokens before it; unary and streamed agree); the server-chosen seed (specmoe.seed) reproduces a sampled answer;
usage.prompt_tokens_details.cached_tokens counts a repeated prompt's cached blocks and the
bench's openai backend reports the gRPC backend's cached tokens; an unknown model is
NotFoundError; an oversized body 413; a full queue 429 (RateLimitError); curl's raw SSE ends with `data: [DONE]`; a client that
hangs up mid-stream has its request cancelled and its KV blocks freed (the metrics and the
log show it); `specmoe-cli bench --backend openai` reports the same counts as the gRPC
backend; requests_total counts HTTP requests under transport="http"; TLS with the gRPC
front's cert flags (the openai client and bench over https); SIGTERM drains: /health and new
requests 503, running streams finish with [DONE], exit 0.
"""
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import signal
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specmoe_e2e as e2e  # noqa: E402

PROMPT = "In the beginning God"


class HttpE2eTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = e2e.Server("--http-listen", "127.0.0.1:0")
        cls.base = f"http://127.0.0.1:{cls.server.http_port}"
        cls.client = openai.OpenAI(base_url=cls.base + "/v1", api_key="unused", max_retries=0,
                                   timeout=60)
        cls.tmp = tempfile.mkdtemp(prefix="specmoe_http_test_")

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0

    def complete(self, **kwargs):
        args = dict(model="e2e_target", prompt=PROMPT, max_tokens=16, temperature=0)
        args.update(kwargs)
        return self.client.completions.create(**args)

    def test_models_and_health(self):
        models = self.client.models.list().data
        self.assertEqual([m.id for m in models], ["e2e_target"])
        self.assertTrue(models[0].model_extra["specmoe"]["draft"].endswith("e2e_draft"))
        with urllib.request.urlopen(self.base + "/health", timeout=10) as response:
            self.assertEqual(json.load(response), {"status": "serving"})

    def test_greedy_tokens_equal_grpc(self):
        for prompt in [PROMPT, "And the LORD said"]:
            grpc = e2e.cli_json_lines("complete", "--server", self.server.address,
                                      "--max-tokens", "16", prompt)[0]
            http = self.complete(prompt=prompt, extra_body={"return_token_ids": True})
            choice = http.choices[0]
            self.assertEqual(choice.model_extra["token_ids"], grpc["token_ids"])
            self.assertEqual(choice.text, grpc["text"])
            self.assertEqual(choice.finish_reason, "length")
            self.assertEqual(http.usage.completion_tokens, 16)
            self.assertEqual(http.usage.prompt_tokens, grpc["usage"]["prompt_tokens"])
            self.assertEqual(http.usage.total_tokens, http.usage.prompt_tokens + 16)
            speculation = http.usage.model_extra["speculation"]
            self.assertEqual(speculation["drafted_tokens"], grpc["speculation"]["drafted_tokens"])
            self.assertEqual(speculation["verify_steps"], grpc["speculation"]["verify_steps"])
            # The same tokens as token ids, without speculation.
            by_ids = self.complete(prompt=[1] + list(grpc["token_ids"][:3]),
                                   extra_body={"return_token_ids": True,
                                               "speculation": {"disable": True}})
            self.assertEqual(by_ids.usage.prompt_tokens, 4)
            self.assertEqual(by_ids.usage.model_extra["speculation"]["verify_steps"], 0)

    def test_stream_with_usage_equals_unary(self):
        unary = self.complete(extra_body={"return_token_ids": True})
        chunks = list(self.complete(stream=True, stream_options={"include_usage": True},
                                    extra_body={"return_token_ids": True}))
        token_chunks = [c for c in chunks if c.choices]
        self.assertGreater(len(token_chunks), 1)
        self.assertEqual("".join(c.choices[0].text for c in token_chunks), unary.choices[0].text)
        ids = [t for c in token_chunks for t in c.choices[0].model_extra["token_ids"]]
        self.assertEqual(ids, unary.choices[0].model_extra["token_ids"])
        self.assertEqual(token_chunks[-1].choices[0].finish_reason, "length")
        self.assertTrue(all(c.choices[0].finish_reason is None for c in token_chunks[:-1]))
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 16)
        self.assertEqual(chunks[-1].usage.prompt_tokens, unary.usage.prompt_tokens)
        # Without include_usage: no usage chunk.
        plain = list(self.complete(stream=True))
        self.assertTrue(all(c.choices for c in plain))
        self.assertTrue(all(c.usage is None for c in plain))

    def test_chat_unary_and_stream(self):
        messages = [{"role": "user", "content": PROMPT}]
        unary = self.client.chat.completions.create(model="e2e_target", messages=messages,
                                                    max_completion_tokens=12, temperature=0)
        # The fixture has no tokenizer_config.json: the raw template, i.e. the content itself.
        completion = self.complete(max_tokens=12)
        self.assertEqual(unary.choices[0].message.content, completion.choices[0].text)
        self.assertEqual(unary.choices[0].message.role, "assistant")
        self.assertEqual(unary.object, "chat.completion")
        self.assertTrue(unary.id.startswith("chatcmpl-"))
        chunks = list(self.client.chat.completions.create(
            model="e2e_target", messages=messages, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, unary.choices[0].message.content)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(model="e2e_target", messages=messages,
                                                logprobs=True, top_logprobs=21)
        self.assertEqual(caught.exception.param, "top_logprobs")
        self.assertIn("top_logprobs", caught.exception.message)

    def grpc_logprobs(self, top, max_tokens=12):
        """The gRPC answer (specmoe-cli --json) of the greedy PROMPT with logprobs."""
        return e2e.cli_json_lines("complete", "--server", self.server.address, "--max-tokens",
                                  str(max_tokens), "--logprobs", str(top), PROMPT)[0]

    def assert_same_values(self, http_values, grpc_values):
        """float32 values, equal bit for bit (JSON prints them at different lengths)."""
        f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]  # noqa: E731
        self.assertEqual([f32(v) for v in http_values], [f32(v) for v in grpc_values])

    def test_completion_logprobs_equal_grpc(self):
        grpc = self.grpc_logprobs(3)
        entries = grpc["logprobs"]
        self.assertEqual([e["token_id"] for e in entries], grpc["token_ids"])
        unary = self.complete(max_tokens=12, logprobs=3, extra_body={"return_token_ids": True})
        choice = unary.choices[0]
        self.assertEqual(choice.model_extra["token_ids"], grpc["token_ids"])
        lp = choice.logprobs
        self.assertEqual(len(lp.tokens), 12)
        self.assert_same_values(lp.token_logprobs, [e["logprob"] for e in entries])
        # The tokens' texts make up the text; the offsets count its characters.
        self.assertEqual("".join(lp.tokens), choice.text)
        self.assertEqual(lp.text_offset, [len("".join(lp.tokens[:i])) for i in range(12)])
        for i, (top, entry) in enumerate(zip(lp.top_logprobs, entries)):
            self.assertEqual(len(entry["top"]), 3)
            # Keys are token texts: the values are gRPC's alternatives', in the same order.
            self.assert_same_values(sorted(top.values(), reverse=True),
                                    [t["logprob"] for t in entry["top"]][:len(top)])
            if entry["top"][0]["token_id"] == entry["token_id"]:  # greedy: the best is chosen
                self.assertEqual(top[lp.tokens[i]], lp.token_logprobs[i])
        # Streamed: each chunk carries exactly its own tokens' entries.
        chunks = [c for c in self.complete(max_tokens=12, logprobs=3, stream=True,
                                           extra_body={"return_token_ids": True}) if c.choices]
        self.assertGreater(len(chunks), 1)
        streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for c in chunks:
            ids = c.choices[0].model_extra["token_ids"]
            if not ids:
                self.assertIsNone(c.choices[0].logprobs)
                continue
            self.assertEqual(len(c.choices[0].logprobs.tokens), len(ids))
            for key in streamed:
                streamed[key] += getattr(c.choices[0].logprobs, key)
        for key in streamed:
            self.assertEqual(streamed[key], getattr(lp, key), key)
        # logprobs 0: the chosen tokens only.
        zero = self.complete(max_tokens=12, logprobs=0).choices[0].logprobs
        self.assertEqual(zero.token_logprobs, lp.token_logprobs)
        self.assertEqual(zero.top_logprobs, [{}] * 12)

    def test_chat_logprobs_equal_grpc(self):
        grpc = self.grpc_logprobs(2)
        messages = [{"role": "user", "content": PROMPT}]  # raw template: the same prompt
        args = dict(model="e2e_target", messages=messages, max_tokens=12, temperature=0,
                    logprobs=True, top_logprobs=2)
        unary = self.client.chat.completions.create(**args)
        content = unary.choices[0].logprobs.content
        self.assertEqual(len(content), 12)
        self.assert_same_values([c.logprob for c in content],
                                [e["logprob"] for e in grpc["logprobs"]])
        self.assertEqual(b"".join(bytes(c.bytes) for c in content).decode(),
                         unary.choices[0].message.content)
        for c, entry in zip(content, grpc["logprobs"]):
            self.assertEqual(c.token, bytes(c.bytes).decode("utf-8", "replace"))
            self.assert_same_values([t.logprob for t in c.top_logprobs],
                                    [t["logprob"] for t in entry["top"]])
            for t, g in zip(c.top_logprobs, entry["top"]):
                if g["token_id"] == entry["token_id"]:
                    self.assertEqual((t.token, t.bytes), (c.token, c.bytes))
        chunks = list(self.client.chat.completions.create(stream=True, **args))
        streamed = []
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].logprobs is not None:
                streamed += chunk.choices[0].logprobs.content
        self.assertEqual([c.model_dump() for c in streamed], [c.model_dump() for c in content])
        # Without top_logprobs: no alternatives.
        plain = self.client.chat.completions.create(
            model="e2e_target", messages=messages, max_tokens=4, temperature=0, logprobs=True)
        self.assertEqual([c.top_logprobs for c in plain.choices[0].logprobs.content], [[]] * 4)
        self.assertIsNone(self.client.chat.completions.create(
            model="e2e_target", messages=messages, max_tokens=4).choices[0].logprobs)

    def test_echo_logprobs_score_the_prompt(self):
        greedy = self.complete(prompt=[1], max_tokens=12, extra_body={"return_token_ids": True})
        # A greedy stretch (each token the model's own choice), then tokens it would not pick.
        ids = [1] + greedy.choices[0].model_extra["token_ids"] + [300, 301, 302, 7, 8]
        scored = self.complete(prompt=ids, echo=True, logprobs=5, max_tokens=0)
        choice = scored.choices[0]
        lp = choice.logprobs
        self.assertEqual(scored.usage.prompt_tokens, len(ids))
        self.assertEqual(scored.usage.completion_tokens, 0)
        self.assertEqual(choice.finish_reason, "length")
        self.assertEqual(len(lp.tokens), len(ids))
        self.assertIsNone(lp.token_logprobs[0])
        self.assertIsNone(lp.top_logprobs[0])
        self.assertEqual(lp.text_offset, [len("".join(lp.tokens[:i])) for i in range(len(ids))])
        # The independent reference: entry i is the logprob of ids[i] given ids[:i], i.e. the
        # first generated token's entry of a greedy request for ids[:i].
        chosen_checked = 0
        for i in range(1, len(ids)):
            ref = self.complete(prompt=ids[:i], max_tokens=1, logprobs=5,
                                extra_body={"return_token_ids": True}).choices[0]
            self.assertEqual(lp.top_logprobs[i], ref.logprobs.top_logprobs[0], i)
            if ref.model_extra["token_ids"][0] == ids[i]:
                self.assertEqual(lp.tokens[i], ref.logprobs.tokens[0])
                self.assertEqual(lp.token_logprobs[i], ref.logprobs.token_logprobs[0], i)
                chosen_checked += 1
            else:
                self.assertLessEqual(lp.token_logprobs[i], ref.logprobs.token_logprobs[0], i)
        self.assertGreaterEqual(chosen_checked, 12)
        # max_tokens 4: the same prompt entries, then the generated tokens'; streamed alike.
        more = self.complete(prompt=ids, echo=True, logprobs=5, max_tokens=4).choices[0]
        plain = self.complete(prompt=ids, logprobs=5, max_tokens=4).choices[0]
        self.assertEqual(more.text, choice.text + plain.text)
        self.assertEqual(more.logprobs.tokens, lp.tokens + plain.logprobs.tokens)
        self.assertEqual(more.logprobs.token_logprobs,
                         lp.token_logprobs + plain.logprobs.token_logprobs)
        self.assertEqual(more.logprobs.top_logprobs, lp.top_logprobs + plain.logprobs.top_logprobs)
        chunks = [c for c in self.complete(prompt=ids, echo=True, logprobs=5, max_tokens=4,
                                           stream=True) if c.choices]
        self.assertEqual(chunks[0].choices[0].text, choice.text)
        streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for c in chunks:
            if c.choices[0].logprobs is None:
                continue
            for key in streamed:
                streamed[key] += getattr(c.choices[0].logprobs, key)
        for key in streamed:
            self.assertEqual(streamed[key], getattr(more.logprobs, key), key)
        self.assertEqual("".join(c.choices[0].text for c in chunks), more.text)
        # A text prompt: the echo is the prompt; max_tokens 0 without logprobs too.
        text = self.complete(echo=True, logprobs=1, max_tokens=0)
        self.assertEqual(text.choices[0].text, PROMPT)
        self.assertEqual(len(text.choices[0].logprobs.tokens), text.usage.prompt_tokens)
        bare = self.complete(echo=True, max_tokens=0)
        self.assertEqual(bare.choices[0].text, PROMPT)
        self.assertEqual(bare.usage.completion_tokens, 0)
        self.assertIsNone(bare.choices[0].logprobs)

    def test_seed_echo_reproduces_a_sampled_answer(self):
        first = self.complete(temperature=0.9, max_tokens=12)
        seed = first.model_extra["specmoe"]["seed"]
        self.assertGreater(seed, 0)
        again = self.complete(temperature=0.9, max_tokens=12, seed=seed)
        self.assertEqual(again.choices[0].text, first.choices[0].text)
        self.assertEqual(again.model_extra["specmoe"]["seed"], seed)
        chunks = list(self.complete(temperature=0.9, max_tokens=12, stream=True,
                                    stream_options={"include_usage": True}))
        streamed_seed = chunks[-1].model_extra["specmoe"]["seed"]
        finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishing[0].model_extra["specmoe"]["seed"], streamed_seed)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        self.assertEqual(self.complete(temperature=0.9, max_tokens=12,
                                       seed=streamed_seed).choices[0].text, text)
        several = self.complete(temperature=0.9, max_tokens=6, n=2).model_extra["specmoe"]
        self.assertEqual(len(several["seeds"]), 2)
        self.assertEqual(several["seed"], several["seeds"][0])

    def test_cached_tokens_on_a_repeated_prompt(self):
        prompt = ("Now the serpent was more subtil than any beast of the field which the "
                  "LORD God had made, and he said unto the woman, Yea, hath God said")
        first = self.complete(prompt=prompt, max_tokens=2)
        self.assertEqual(first.usage.prompt_tokens_details.cached_tokens, 0)
        self.assertGreater(first.usage.prompt_tokens, 32)
        second = self.complete(prompt=prompt, max_tokens=2)
        cached = second.usage.prompt_tokens_details.cached_tokens
        self.assertGreater(cached, 0)
        self.assertEqual(cached % 16, 0)
        self.assertLess(cached, second.usage.prompt_tokens)
        self.assertEqual(second.choices[0].text, first.choices[0].text)

    def test_n_choices_are_seed_plus_i(self):
        sampled = self.complete(n=3, temperature=0.8, seed=7, max_tokens=10)
        self.assertEqual(sorted(c.index for c in sampled.choices), [0, 1, 2])
        self.assertEqual(sampled.usage.completion_tokens, 30)
        for choice in sampled.choices:
            alone = self.complete(temperature=0.8, seed=7 + choice.index, max_tokens=10)
            self.assertEqual(choice.text, alone.choices[0].text)
        streamed = list(self.complete(n=2, temperature=0.8, seed=7, max_tokens=10, stream=True))
        for index in range(2):
            text = "".join(c.choices[0].text for c in streamed if c.choices[0].index == index)
            self.assertEqual(text, sampled.choices[index].text)

    def test_echo_and_stop(self):
        echoed = self.complete(echo=True)
        plain = self.complete()
        self.assertEqual(echoed.choices[0].text, PROMPT + plain.choices[0].text)
        streamed = "".join(c.choices[0].text for c in self.complete(echo=True, stream=True))
        self.assertEqual(streamed, echoed.choices[0].text)
        full = plain.choices[0].text
        word = full.split()[3]
        stopped = self.complete(stop=[word, "\u0000never"])
        self.assertEqual(stopped.choices[0].text, full[:full.index(word)])
        self.assertEqual(stopped.choices[0].finish_reason, "stop")

    def test_invalid_parameters_name_the_parameter(self):
        cases = [(dict(temperature=-1), "temperature"),
                 (dict(max_tokens=e2e.MAX_TOKENS_LIMIT + 1), "max_tokens"),
                 (dict(presence_penalty=0.5), "presence_penalty"),
                 (dict(frequency_penalty=1.0), "frequency_penalty"),
                 (dict(n=9), "n"),
                 (dict(top_p="high"), "top_p"),
                 (dict(logprobs=21), "logprobs"),
                 (dict(prompt=[1, 999999]), "prompt")]
        for kwargs, param in cases:
            with self.subTest(param=param):
                with self.assertRaises(openai.BadRequestError) as caught:
                    self.complete(**kwargs)
                self.assertEqual(caught.exception.param, param)
                self.assertIn(param.split("_")[0], caught.exception.message)
        with self.assertRaises(openai.NotFoundError) as caught:
            self.complete(model="no-such-model")
        self.assertEqual(caught.exception.code, "model_not_found")

    def test_oversized_body_and_unknown_path(self):
        body = json.dumps({"prompt": "x" * (5 << 20)}).encode()
        request = urllib.request.Request(self.base + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        self.assertEqual(caught.exception.code, 413)
        self.assertIn("error", json.load(caught.exception))
        with self.assertRaises(openai.NotFoundError):
            self.client.get("/nothing", cast_to=object)

    def test_curl_sse_ends_with_done(self):
        body = json.dumps({"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True})
        result = subprocess.run(["curl", "-sSN", self.base + "/v1/completions",
                                 "-H", "Content-Type: application/json", "-d", body],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        events = result.stdout.split("\n\n")
        self.assertEqual(events[-1], "")
        self.assertEqual(events[-2], "data: [DONE]")
        for event in events[:-2]:
            self.assertTrue(event.startswith("data: {"), event)
            json.loads(event[len("data: "):])

    def test_hang_up_cancels_and_frees_kv(self):
        before = e2e.parse_metrics(self.server.scrape())
        body = json.dumps({"prompt": PROMPT, "max_tokens": 240, "temperature": 0,
                           "ignore_eos": True, "stream": True,
                           "speculation": {"disable": True}}).encode()
        sock = socket.create_connection(("127.0.0.1", self.server.http_port), timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b'"text":"' not in received:
            received += sock.recv(4096)
        self.assertTrue(received.startswith(b"HTTP/1.1 200"))
        # Hang up at once (RST), mid-stream.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        deadline = time.time() + 30
        while True:
            after = e2e.parse_metrics(self.server.scrape())
            cancelled = (e2e.value(after, "specmoe_requests_total", rpc="Completions",
                                   code="CANCELLED", transport="http")
                         - e2e.value(before, "specmoe_requests_total", rpc="Completions",
                                     code="CANCELLED", transport="http"))
            if (cancelled == 1 and e2e.value(after, "specmoe_running_requests") == 0
                    and e2e.value(after, "specmoe_kv_cache_used_blocks") == 0):
                break
            self.assertLess(time.time(), deadline,
                            "the hung-up request was not cancelled or its KV blocks not freed")
            time.sleep(0.05)
        finished = re.findall(r"rpc=http/completions .*finish=(\w+)", self.server.log())
        self.assertEqual(finished[-1], "cancelled")
        line = [l for l in self.server.log().splitlines() if "finish=cancelled" in l][-1]
        self.assertLess(int(re.search(r"completion_tokens=(\d+)", line).group(1)), 240)

    def test_metrics_count_http_requests(self):
        before = e2e.parse_metrics(self.server.scrape())
        self.complete(max_tokens=4)
        list(self.complete(max_tokens=4, stream=True))
        with self.assertRaises(openai.BadRequestError):
            self.complete(temperature=-1)
        self.client.models.list()
        after = e2e.parse_metrics(self.server.scrape())

        def delta(**labels):
            return (e2e.value(after, "specmoe_requests_total", transport="http", **labels)
                    - e2e.value(before, "specmoe_requests_total", transport="http", **labels))

        self.assertEqual(delta(rpc="Completions", code="OK"), 2)
        self.assertEqual(delta(rpc="Completions", code="INVALID_ARGUMENT"), 1)
        self.assertEqual(delta(rpc="Models", code="OK"), 1)
        self.assertEqual(
            e2e.value(after, "specmoe_requests_total", transport="grpc", rpc="Complete")
            - e2e.value(before, "specmoe_requests_total", transport="grpc", rpc="Complete"), 0)

    def test_bench_openai_backend_counts_equal_grpc(self):
        dataset = os.path.join(self.tmp, "prompts.jsonl")
        with open(dataset, "w") as f:
            for prompt in [PROMPT, "And the LORD said", "Blessed are the"]:
                f.write(json.dumps({"prompt": prompt}) + "\n")
            f.write(json.dumps({"prompt": "Too long", "max_tokens": e2e.MAX_TOKENS_LIMIT + 1})
                    + "\n")
        reports = []
        for backend in (["--server", self.server.address],
                        ["--backend", "openai", "--base-url", self.base + "/v1"]):
            path = os.path.join(self.tmp, f"bench_{len(reports)}.json")
            result = e2e.cli("bench", *backend, "--dataset-path", dataset, "--num-requests",
                             "8", "--concurrency", "2", "--output-len", "10", "--ignore-eos",
                             "--json", path)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(path) as f:
                reports.append(json.load(f))
        grpc, http = reports
        self.assertEqual(http["backend"], "openai")
        self.assertEqual(http["model_id"], "e2e_target")
        for key in ["completed", "failed", "total_input_tokens", "total_output_tokens",
                    "input_lens", "output_lens", "errors_by_code", "status_codes",
                    "total_drafted_tokens", "total_accepted_tokens"]:
            self.assertEqual(http[key], grpc[key], key)
        self.assertEqual(http["completed"], 6)
        self.assertGreater(http["mean_ttft_ms"], 0)
        # Cached prompt tokens: a shared 48-token prefix, one request at a time; each backend
        # its own prefix (--seed), so the second run does not find the first one's blocks.
        cached = []
        for seed, backend in (("5", ["--server", self.server.address]),
                              ("6", ["--backend", "openai", "--base-url", self.base + "/v1"])):
            path = os.path.join(self.tmp, f"bench_cached_{seed}.json")
            result = e2e.cli("--seed", seed, "bench", *backend, "--dataset-name", "random",
                             "--input-len", "8", "--shared-prefix-tokens", "48",
                             "--num-requests", "3", "--concurrency", "1", "--output-len", "2",
                             "--ignore-eos", "--json", path)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(path) as f:
                cached.append(json.load(f)["total_cached_prompt_tokens"])
        self.assertGreater(cached[0], 0)
        self.assertEqual(cached[1], cached[0])


class HttpSecurityTest(unittest.TestCase):
    def test_tls_with_the_grpc_cert_flags(self):
        if subprocess.run(["sh", "-c", "command -v openssl"], capture_output=True).returncode:
            self.skipTest("openssl is needed to make a test certificate")
        tmp = tempfile.mkdtemp(prefix="specmoe_http_tls_")
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        server = e2e.Server("--http-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key,
                            cli_args=("--tls-ca", cert))
        try:
            base = f"https://127.0.0.1:{server.http_port}"
            client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0,
                                   http_client=openai.DefaultHttpxClient(
                                       verify=ssl.create_default_context(cafile=cert)))
            self.assertEqual(client.completions.create(
                model="e2e_target", prompt=PROMPT, max_tokens=3).usage.completion_tokens, 3)
            with self.assertRaises(openai.APIConnectionError):  # the server's cert is not trusted
                openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0).models.list()
            report = os.path.join(tmp, "bench.json")
            result = e2e.cli("bench", "--backend", "openai", "--base-url", base + "/v1",
                             "--tls-ca", cert, "--num-requests", "2", "--output-len", "4",
                             "--ignore-eos", "--json", report)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(report) as f:
                self.assertEqual(json.load(f)["completed"], 2)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_wrong_key_is_authentication_error(self):
        tmp = tempfile.mkdtemp(prefix="specmoe_http_key_")
        key_file = os.path.join(tmp, "key")
        with open(key_file, "w") as f:
            f.write("http-secret\n")
        server = e2e.Server("--http-listen", "127.0.0.1:0", "--api-key-file", key_file)
        try:
            base = f"http://127.0.0.1:{server.http_port}"
            wrong = openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0)
            with self.assertRaises(openai.AuthenticationError):
                wrong.completions.create(model="e2e_target", prompt=PROMPT, max_tokens=2)
            with self.assertRaises(openai.AuthenticationError):
                wrong.models.list()
            with urllib.request.urlopen(base + "/health", timeout=10) as response:
                self.assertEqual(response.status, 200)
            right = openai.OpenAI(base_url=base + "/v1", api_key="http-secret", max_retries=0)
            self.assertEqual(right.completions.create(model="e2e_target", prompt=PROMPT,
                                                      max_tokens=2).usage.completion_tokens, 2)
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertNotIn("http-secret", server.log())

    def test_chat_template_file(self):
        tmp = tempfile.mkdtemp(prefix="specmoe_http_template_")
        path = os.path.join(tmp, "template.json")
        with open(path, "w") as f:
            json.dump({"roles": {"system": {"prefix": "", "suffix": "\n\n"},
                                 "user": {"prefix": "Question: ", "suffix": "\n"},
                                 "assistant": {"prefix": "Answer: ", "suffix": "\n"}},
                       "generation_prompt": "Answer:", "stop": ["Question:"]}, f)
        messages = [{"role": "system", "content": "And God said"},
                    {"role": "user", "content": "Let there be light"},
                    {"role": "assistant", "content": "and there was light"},
                    {"role": "user", "content": PROMPT}]
        rendered = ("And God said\n\nQuestion: Let there be light\nAnswer: and there was light\n"
                    f"Question: {PROMPT}\nAnswer:")
        server = e2e.Server("--http-listen", "127.0.0.1:0", "--chat-template-file", path)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1",
                                   api_key="unused", max_retries=0, timeout=60)
            chat = client.chat.completions.create(model="e2e_target", messages=messages,
                                                  max_tokens=12, temperature=0)
            models = client.models.list().data
            self.assertEqual(models[0].model_extra["specmoe"]["chat_template"], path)
            with self.assertRaises(openai.BadRequestError) as caught:
                client.chat.completions.create(model="e2e_target", max_tokens=2,
                                               messages=[{"role": "tool", "content": "x"}])
            self.assertEqual(caught.exception.param, "messages")
            self.assertIn("role 'tool'", caught.exception.message)
            # The rendered text as a completion (BOS first, the file's stop string): the same
            # prompt tokens and the same greedy text.
            completion = client.completions.create(model="e2e_target", prompt=rendered,
                                                   max_tokens=12, temperature=0,
                                                   stop=["Question:"])
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertEqual(chat.usage.prompt_tokens, completion.usage.prompt_tokens)
        self.assertEqual(chat.choices[0].message.content, completion.choices[0].text)
        self.assertEqual(chat.choices[0].finish_reason, completion.choices[0].finish_reason)
        # Without BOS: one prompt token fewer.
        with open(path, "w") as f:
            json.dump({"roles": {"user": {"prefix": "Question: ", "suffix": "\n"}},
                       "generation_prompt": "Answer:", "bos": False}, f)
        server = e2e.Server("--http-listen", "127.0.0.1:0", "--chat-template-file", path)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1",
                                   api_key="unused", max_retries=0, timeout=60)
            no_bos = client.chat.completions.create(
                model="e2e_target", messages=[{"role": "user", "content": PROMPT}], max_tokens=1)
            with_bos = client.completions.create(
                model="e2e_target", prompt=f"Question: {PROMPT}\nAnswer:", max_tokens=1)
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertEqual(no_bos.usage.prompt_tokens, with_bos.usage.prompt_tokens - 1)
        # A bad file or both template flags: the server refuses to start, naming the fault.
        with open(path, "w") as f:
            f.write('{"roles": {"user": {"prefx": "Q: "}}}')
        for flags, message in [
                (["--chat-template-file", path], f"--chat-template-file {path}: unknown key "
                                                 "'roles.user.prefx'"),
                (["--chat-template-file", path, "--chat-template", "raw"],
                 "--chat-template and --chat-template-file both choose")]:
            result = subprocess.run([e2e.SERVER, "--target", e2e.TARGET, "--listen",
                                     "127.0.0.1:0", "--http-listen", "127.0.0.1:0", *flags],
                                    capture_output=True, text=True, timeout=60)
            self.assertNotEqual(result.returncode, 0)
            self.assertLess(result.returncode, 128)  # an exit, not a signal
            self.assertIn(message, result.stdout + result.stderr)


class HttpQueueTest(unittest.TestCase):
    """One request runs at a time (--max-batch 1), so later requests wait behind long ones."""

    BODY = {"prompt": PROMPT, "max_tokens": 240, "temperature": 0, "ignore_eos": True,
            "speculation": {"disable": True}}

    def start_streams(self, base, count):
        """Starts `count` long streams; returns once all were admitted (threads, results)."""
        body = json.dumps(dict(self.BODY, stream=True)).encode()
        streams = [None] * count
        admitted = threading.Semaphore(0)

        def run(i):
            request = urllib.request.Request(base + "/v1/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                admitted.release()  # the headers came: the request was submitted
                streams[i] = response.read().decode()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for _ in threads:
            self.assertTrue(admitted.acquire(timeout=60))
        return threads, streams

    def test_unary_client_hang_up_cancels_its_request(self):
        server = e2e.Server("--http-listen", "127.0.0.1:0", "--max-batch", "1")
        try:
            before = e2e.parse_metrics(server.scrape())
            threads, streams = self.start_streams(f"http://127.0.0.1:{server.http_port}", 8)
            body = json.dumps(self.BODY).encode()
            sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.time() + 30
            while "rpc=http/completions" not in server.log() and time.time() < deadline:
                time.sleep(0.01)  # the first stream finished: the unary one is queued
            sock.close()  # hang up while it waits
            for thread in threads:
                thread.join()
            while "the client closed the connection" not in server.log():
                self.assertLess(time.time(), deadline, "the hang-up was not noticed")
                time.sleep(0.02)
            request_id = re.search(r"request (\S+) \S+: the client closed the connection",
                                   server.log()).group(1)
            while f"request {request_id} rpc=" not in server.log():
                self.assertLess(time.time(), deadline)
                time.sleep(0.02)
            line = re.search(f"request {request_id} rpc=.*", server.log()).group(0)
            self.assertIn("finish=cancelled", line)
            self.assertLess(int(re.search(r"completion_tokens=(\d+)", line).group(1)), 240)
            while True:  # the gauges follow at the engine's next step
                after = e2e.parse_metrics(server.scrape())
                if e2e.value(after, "specmoe_kv_cache_used_blocks") == 0:
                    break
                self.assertLess(time.time(), deadline, "the KV blocks were not freed")
                time.sleep(0.02)
            self.assertEqual(
                e2e.value(after, "specmoe_requests_total", rpc="Completions", code="CANCELLED")
                - e2e.value(before, "specmoe_requests_total", rpc="Completions",
                            code="CANCELLED"), 1)
            self.assertTrue(all(s.endswith("data: [DONE]\n\n") for s in streams))
        finally:
            self.assertEqual(server.stop(), 0)

    def test_full_queue_is_rate_limit_error(self):
        # n = 3 submits three requests at once; one runs and one waits (--max-queue 1), so
        # the third finds the queue full: 429, and the two admitted ones are cancelled.
        server = e2e.Server("--http-listen", "127.0.0.1:0", "--max-batch", "1",
                            "--max-queue", "1")
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1",
                                   api_key="x", max_retries=0)
            with self.assertRaises(openai.RateLimitError) as caught:
                client.completions.create(model="e2e_target", prompt=PROMPT, n=3, max_tokens=8)
            self.assertEqual(caught.exception.type, "rate_limit_error")
            # The two admitted choices are cancelled at the engine's next step, so the queue
            # may still be full for a moment: the server keeps serving once it drains.
            deadline = time.time() + 10
            while True:
                try:
                    reply = client.completions.create(model="e2e_target", prompt=PROMPT,
                                                      max_tokens=8)
                    break
                except openai.RateLimitError:
                    self.assertLess(time.time(), deadline, "the queue never drained")
                    time.sleep(0.05)
            self.assertEqual(reply.usage.completion_tokens, 8)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_sigterm_drains_running_streams(self):
        # The last of 12 long streams is still queued or running when SIGTERM comes, right
        # after all 12 were admitted.
        server = e2e.Server("--http-listen", "127.0.0.1:0", "--max-batch", "1")
        base = f"http://127.0.0.1:{server.http_port}"
        threads, streams = self.start_streams(base, 12)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        while True:  # the signal is handled asynchronously
            try:
                urllib.request.urlopen(base + "/health", timeout=10)
            except urllib.error.HTTPError as e:
                self.assertEqual(e.code, 503)
                self.assertEqual(json.load(e), {"status": "draining"})
                break
            self.assertLess(time.time(), deadline)
            time.sleep(0.005)
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(
                base + "/v1/completions", data=json.dumps(self.BODY).encode(),
                headers={"Content-Type": "application/json"}), timeout=10)
        self.assertEqual(caught.exception.code, 503)
        for thread in threads:
            thread.join()
        self.assertEqual(server.stop(), 0)
        for stream in streams:
            self.assertTrue(stream.endswith("data: [DONE]\n\n"), stream[-200:])
            self.assertIn('"finish_reason":"length"', stream)
        drain = re.search(r"drain: (\d+) call\(s\) were in flight, (\d+) still are",
                          server.log())
        self.assertGreaterEqual(int(drain.group(1)), 1)
        self.assertEqual(drain.group(2), "0")


if __name__ == "__main__":
    unittest.main()
