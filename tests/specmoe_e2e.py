"""Shared helpers of the Python e2e tests (tests/*_e2e_test.py, run by ctest).

Starts the real specmoe-server on 127.0.0.1 (gRPC port 0, metrics port 0) with the tiny
committed fixture pair, waits until grpc.health.v1 says SERVING, runs specmoe-cli, scrapes
/metrics and parses the Prometheus text format.
"""
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("SPECMOE_BINARY_DIR", os.path.join(ROOT, "build"))
SERVER = os.path.join(BUILD, "server", "specmoe-server")
CLI = os.path.join(BUILD, "client", "specmoe-cli")
TARGET = os.path.join(ROOT, "tests", "fixtures", "models", "e2e_target")
DRAFT = os.path.join(ROOT, "tests", "fixtures", "models", "e2e_draft")
MAX_TOKENS_LIMIT = 250


class Server:
    """A specmoe-server child process on 127.0.0.1; stop() sends SIGTERM and checks exit 0."""

    def __init__(self, *extra, cli_args=()):
        """`extra`: more server flags; `cli_args`: what specmoe-cli needs to reach it (TLS)."""
        self.dir = tempfile.mkdtemp(prefix="specmoe_py_e2e_")
        self.log_path = os.path.join(self.dir, "server.log")
        port_file = os.path.join(self.dir, "port")
        args = [SERVER, "--listen", "127.0.0.1:0", "--port-file", port_file,
                "--metrics-listen", "127.0.0.1:0", "--target", TARGET, "--draft", DRAFT,
                "--max-tokens-limit", str(MAX_TOKENS_LIMIT), "--default-max-tokens", "12",
                # Fixed trees: for fixture models this small the dynamic policy rightly
                # prefers plain decoding, and these tests check speculation's accounting.
                "--tree", "1,2,1", "--tree-policy", "static", "--threads", "1",
                "--drain-seconds", "5", *extra]
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start:\n" + self.log())
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())
        self.address = f"127.0.0.1:{self.port}"
        match = None
        while match is None and time.time() < deadline:
            match = re.search(r"metrics listening on \S+ \(port (\d+)\)", self.log())
            time.sleep(0.02)
        if match is None:
            raise RuntimeError("no metrics port in the log:\n" + self.log())
        self.metrics_port = int(match.group(1))
        self.http_port = None
        if "--http-listen" in extra:
            match = None
            while match is None and time.time() < deadline:
                match = re.search(r"HTTP \(OpenAI API\) listening on \S+ \(port (\d+)\)",
                                  self.log())
                time.sleep(0.02)
            if match is None:
                raise RuntimeError("no HTTP port in the log:\n" + self.log())
            self.http_port = int(match.group(1))
        while cli("health", "--server", self.address, *cli_args).returncode != 0:
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError("server never became SERVING:\n" + self.log())
            time.sleep(0.05)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.log_file.close()
        return code

    def scrape(self, api_key=None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.metrics_port}/metrics")
        if api_key is not None:
            request.add_header("Authorization", "Bearer " + api_key)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()


def cli(*args, timeout=120):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def cli_json_lines(*args):
    """Runs specmoe-cli with --json and returns its stdout lines as JSON objects."""
    result = cli(*args, "--json")
    if result.returncode != 0:
        raise AssertionError(f"specmoe-cli {args} failed: {result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_metrics(text):
    """{(name, frozenset of label pairs): value} of a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if match is None:
            raise AssertionError(f"unparsable metrics line: {line!r}")
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def value(samples, name, **labels):
    """The sum of the series of `name` whose labels include `labels` (as a PromQL selector)."""
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= pairs)
