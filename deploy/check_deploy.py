#!/usr/bin/env python3
"""Static checks of the deployment files against the real binaries (deploy/test-image.sh).

Usage: check_deploy.py --server-help FILE --cli-help FILE [--bench-help FILE]
                       --k8s NAME=RENDERED.yaml ... --compose deploy/compose.yaml
                       --dockerfile deploy/docker/Dockerfile.cpu ... --adapter-rules FILE
                       [--guide deploy/README.md] [--readme README.md]

Every SPECMOE_* variable in the rendered Kubernetes objects, the compose file and the
Dockerfiles must name a flag that `specmoe-server --help` lists (the entrypoint turns
SPECMOE_MAX_BATCH into --max-batch); every specmoe-cli call a command and flags that
`specmoe-cli --help` lists; ports, probes, drain and grace periods must agree with each
other and with the server's defaults; the operator's guide must name every server flag; the
README's flag table (the first table after a heading that names flags) must have one row for
every flag `specmoe-server --help` lists and none other, each with the default --help shows.
Prints one line per finding and exits 1 on any.
"""
import argparse
import io
import re
import sys

import yaml
from dockerfile_parse import DockerfileParser

FLAG_RE = re.compile(r"^\s+(?:-\w,\s+)?--([a-z][a-z0-9-]*)")
DEFAULT_RE = re.compile(r"\(default ([^)]*)\)|\[([^\]]*)\]\s*$")
errors = []
notes = []


def fail(where, message):
    errors.append(f"{where}: {message}")


def parse_help(path):
    """Flags of a --help text with their defaults (None where none is shown)."""
    flags = {}
    with open(path) as f:
        for line in f:
            m = FLAG_RE.match(line)
            if m:
                d = DEFAULT_RE.search(line)
                flags[m.group(1)] = (d.group(1) or d.group(2)) if d else None
    return flags


def parse_commands(path):
    with open(path) as f:
        text = f.read()
    return set(re.findall(r"^\s{2,}([a-z]+)\s{2,}\S", text, re.M)) - {"flags"}


def env_to_flag(name):
    return "--" + name[len("SPECMOE_"):].lower().replace("_", "-")


class Flags:
    def __init__(self, server, cli, bench, cli_commands):
        self.server, self.cli, self.bench, self.cli_commands = server, cli, bench, cli_commands

    def check_env(self, where, names):
        for name in names:
            if not name.startswith("SPECMOE_"):
                continue
            flag = env_to_flag(name)
            if flag[2:] in self.server:
                continue
            if name == "SPECMOE_METRICS_LISTEN":
                notes.append(f"{where}: the server has no --metrics-listen yet; the "
                             "entrypoint leaves it out")
                continue
            fail(where, f"{name} would pass {flag}, which specmoe-server --help does not list")

    def check_cli(self, where, argv):
        """argv: a specmoe-cli command line without the program."""
        command = argv[0] if argv else ""
        if command not in self.cli_commands:
            if command == "bench":
                notes.append(f"{where}: specmoe-cli has no bench command yet; its flags "
                             "are not checked")
                return
            fail(where, f"specmoe-cli has no command '{command}'")
            return
        # bench takes its own flags and the top-level ones (--server, --api-key-file, ...).
        known = {**self.cli, **self.bench} if command == "bench" else self.cli
        for arg in argv[1:]:
            if arg.startswith("--") and arg[2:].split("=")[0] not in known:
                fail(where, f"specmoe-cli {command} has no flag {arg}")


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def image_defaults(path):
    with open(path, "rb") as f:
        parser = DockerfileParser(fileobj=io.BytesIO(f.read()))
    env = {}
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            env = {}
        if instruction["instruction"] == "ENV":
            for m in re.finditer(r"(\w+)=(\S*)", instruction["value"]):
                env[m.group(1)] = m.group(2)
    return parser, env


def check_dockerfile(path, flags, cuda):
    parser, env = image_defaults(path)
    flags.check_env(path, env)
    froms = [i["value"].split()[0] for i in parser.structure if i["instruction"] == "FROM"]
    stages = []
    for i in parser.structure:
        if i["instruction"] == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append(i)
    build_runs = " ".join(i["value"] for i in stages[0] if i["instruction"] == "RUN")
    if "/deploy/setup.sh --build-only" not in build_runs:
        fail(path, "the build stage does not install through deploy/setup.sh --build-only")
    runtime = stages[-1]
    if not any(i["instruction"] == "USER" and not i["value"].startswith("0")
               for i in runtime):
        fail(path, "the runtime stage does not switch to a non-root USER")
    exposed = {int(p) for i in runtime if i["instruction"] == "EXPOSE"
               for p in i["value"].split()}
    wanted = {port_of(env["SPECMOE_LISTEN"]), port_of(env["SPECMOE_METRICS_LISTEN"])}
    if exposed != wanted:
        fail(path, f"EXPOSE {sorted(exposed)} is not the listen ports {sorted(wanted)}")
    if not any(i["instruction"] == "HEALTHCHECK" and "specmoe-healthcheck" in i["value"]
               for i in runtime):
        fail(path, "no HEALTHCHECK through specmoe-healthcheck (specmoe-cli health)")
    if not env.get("SPECMOE_LISTEN", "").startswith("0.0.0.0:"):
        fail(path, "the image does not listen on 0.0.0.0")
    if cuda:
        args = {m.group(1): m.group(2) for m in
                re.finditer(r"^ARG (\w+)=(\S+)", open(path).read(), re.M)}
        resolved = [f.replace("${CUDA_VERSION}", args.get("CUDA_VERSION", "?")) for f in froms]
        if not re.fullmatch(r"nvidia/cuda:13\.[\d.]+-devel-ubuntu24\.04", resolved[0]):
            fail(path, f"build stage FROM {resolved[0]} is not a CUDA 13 devel Ubuntu 24.04 image")
        if resolved[-1] != resolved[0].replace("-devel-", "-runtime-"):
            fail(path, f"runtime FROM {resolved[-1]} does not match {resolved[0]}")
    elif froms[0] != "debian:bookworm-slim" or froms[-1] != "debian:bookworm-slim":
        fail(path, "the CPU image is not built and run on debian:bookworm-slim")
    return env


def check_k8s(name, path, flags, image_env, server_defaults, adapter_metric):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    where = f"k8s {name}"
    deployment = by_kind["Deployment"]["specmoe"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = dict(image_env)
    for source in container.get("envFrom", []):
        cm = by_kind["ConfigMap"][source["configMapRef"]["name"]]
        env.update(cm["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "")
    flags.check_env(where, [k for k in env if env[k] != ""])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("grpc") != port_of(env["SPECMOE_LISTEN"]):
        fail(where, f"container port grpc {ports.get('grpc')} is not SPECMOE_LISTEN's port")
    if ports.get("metrics") != port_of(env["SPECMOE_METRICS_LISTEN"]):
        fail(where, "container port metrics is not SPECMOE_METRICS_LISTEN's port")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") != str(ports.get("metrics")):
        fail(where, "prometheus.io/port is not the metrics port")
    tls = bool(env.get("SPECMOE_TLS_CERT"))
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(probe_name)
        if probe is None:
            fail(where, f"no {probe_name}")
            continue
        if "grpc" in probe:
            if tls:
                fail(where, f"{probe_name}: the native gRPC probe cannot speak TLS")
            if probe["grpc"]["port"] != ports["grpc"]:
                fail(where, f"{probe_name}: gRPC probe port is not the grpc port")
        elif "exec" in probe:
            command = probe["exec"]["command"]
            if command[0] == "/opt/specmoe/bin/specmoe-healthcheck":
                continue
            if command[0].endswith("specmoe-cli"):
                flags.check_cli(f"{where} {probe_name}", command[1:])
            else:
                fail(where, f"{probe_name}: exec probe {command[0]} is not specmoe-cli")
        else:
            fail(where, f"{probe_name}: neither a gRPC nor an exec probe")
    drain = int(env.get("SPECMOE_DRAIN_SECONDS", server_defaults["drain-seconds"]))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    sleep = int(pre_stop[1]) if pre_stop[0] == "sleep" else 0
    grace = pod["terminationGracePeriodSeconds"]
    if grace != sleep + drain + 5:
        fail(where, f"terminationGracePeriodSeconds {grace} is not preStop {sleep} + drain "
                    f"{drain} + 5")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for var in ("SPECMOE_API_KEY_FILE", "SPECMOE_TLS_CERT", "SPECMOE_TLS_KEY"):
        if env.get(var):
            mount = [p for p in mounts if env[var].startswith(p + "/")]
            if not mount or "secret" not in volumes[mounts[mount[0]]]:
                fail(where, f"{var}={env[var]} is not in a mounted Secret")
    for model in ("SPECMOE_TARGET", "SPECMOE_DRAFT"):
        if env.get(model) and not any(env[model].startswith(p + "/") for p in mounts):
            fail(where, f"{model}={env[model]} is not on a mounted volume")
    gpus = [container["resources"].get(k, {}).get("nvidia.com/gpu") for k in ("requests", "limits")]
    device = env.get("SPECMOE_DEVICE", server_defaults["device"])
    if device == "cuda" and gpus != [1, 1]:
        fail(where, f"--device cuda without nvidia.com/gpu: 1 (got {gpus})")
    if device == "cpu" and any(gpus):
        fail(where, "--device cpu with a GPU request")
    service = by_kind["Service"]["specmoe"]
    if service["spec"].get("clusterIP") != "None":
        fail(where, "the Service is not headless")
    for port in service["spec"]["ports"]:
        if port["targetPort"] not in ports:
            fail(where, f"Service targetPort {port['targetPort']} is no container port")
    hpa = by_kind["HorizontalPodAutoscaler"]["specmoe"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    if metric != adapter_metric:
        fail(where, f"HPA metric {metric} is not the Prometheus adapter rule's {adapter_metric}")
    for kind in ("PodDisruptionBudget", "ConfigMap", "Secret", "PersistentVolumeClaim"):
        if kind not in by_kind:
            fail(where, f"no {kind}")
    print(f"check: k8s {name}: {len(docs)} objects, device {device}, GPUs {gpus[1] or 0}, "
          f"probes {'exec' if tls else 'grpc'}, grace {grace} s = {sleep} + {drain} + 5")


def parse_duration(text):
    m = re.fullmatch(r"(\d+)s", text)
    return int(m.group(1)) if m else None


def check_compose(path, flags, image_env, server_defaults):
    with open(path) as f:
        compose = yaml.safe_load(f)
    for name, service in compose["services"].items():
        where = f"compose {name}"
        env = service.get("environment", {})
        flags.check_env(where, env)
        entrypoint = service.get("entrypoint")
        if entrypoint and entrypoint[0].endswith("specmoe-cli"):
            flags.check_cli(where, service.get("command", []))
        if service.get("image", "").startswith("localhost/specmoe:c") and not entrypoint:
            drain = int(env.get("SPECMOE_DRAIN_SECONDS", server_defaults["drain-seconds"]))
            grace = parse_duration(service.get("stop_grace_period", "10s"))
            if grace != drain + 5:
                fail(where, f"stop_grace_period {grace} s is not drain {drain} + 5")
            inside = {int(p.rsplit(":", 1)[1]) for p in service.get("ports", [])}
            wanted = {port_of(image_env["SPECMOE_LISTEN"]),
                      port_of(image_env["SPECMOE_METRICS_LISTEN"])}
            if inside != wanted:
                fail(where, f"published container ports {sorted(inside)} are not {sorted(wanted)}")
            if env.get("SPECMOE_DEVICE") == "cuda":
                devices = service["deploy"]["resources"]["reservations"]["devices"]
                if not any("gpu" in d.get("capabilities", []) for d in devices):
                    fail(where, "a cuda server without a GPU reservation")
    print(f"check: compose: {len(compose['services'])} services")


TABLE_FLAG_RE = re.compile(r"`--([a-z][a-z0-9-]*)")


def readme_flag_table(path):
    """{flag: default cell} of the first Markdown table after a heading naming flags."""
    rows, in_section, in_table = {}, False, False
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                if in_table:
                    break
                in_section = "flags" in line.lower()
                continue
            if not in_section:
                continue
            if line.startswith("|"):
                in_table = True
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
                for flag in TABLE_FLAG_RE.findall(cells[0]):
                    rows[flag] = cells[1] if len(cells) > 1 else ""
            elif in_table:
                break
    return rows


def check_readme(path, server):
    rows = readme_flag_table(path)
    if not rows:
        fail(path, "no flag table (a Markdown table after a heading that names flags)")
        return
    for flag, default in sorted(server.items()):
        if flag == "help":
            continue
        if flag not in rows:
            fail(path, f"the flag table has no row for --{flag}")
            continue
        shown = rows[flag].replace("`", "").split(" ")[0] if rows[flag] else ""
        if default is not None and shown != default:
            fail(path, f"--{flag}: the table's default '{rows[flag]}' is not --help's '{default}'")
    for flag in sorted(set(rows) - set(server)):
        fail(path, f"the flag table lists --{flag}, which specmoe-server --help does not")
    print(f"check: {path}: the flag table lists {len(rows)} flags")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server-help", required=True)
    p.add_argument("--cli-help", required=True)
    p.add_argument("--bench-help")
    p.add_argument("--k8s", action="append", default=[])
    p.add_argument("--compose", required=True)
    p.add_argument("--dockerfile", action="append", default=[])
    p.add_argument("--adapter-rules", required=True)
    p.add_argument("--guide", help="the operator's guide, which must name every server flag")
    p.add_argument("--readme", help="the README, whose flag table must match --help")
    args = p.parse_args()
    server = parse_help(args.server_help)
    cli = parse_help(args.cli_help)
    if len(server) < 10 or "drain-seconds" not in server or "health" not in parse_commands(
            args.cli_help):
        print("check: cannot read the flags from the --help texts", file=sys.stderr)
        return 1
    bench = parse_help(args.bench_help) if args.bench_help else {}
    flags = Flags(server, cli, bench, parse_commands(args.cli_help))
    print(f"check: specmoe-server --help lists {len(server)} flags, specmoe-cli "
          f"{len(cli)} flags and the commands {' '.join(sorted(flags.cli_commands))}")
    image_env = None
    for path in args.dockerfile:
        env = check_dockerfile(path, flags, cuda="cuda" in path)
        if "cpu" in path:
            image_env = env
    with open(args.adapter_rules) as f:
        adapter_metric = yaml.safe_load(f)["rules"][0]["name"]["as"]
    for item in args.k8s:
        name, path = item.split("=", 1)
        check_k8s(name, path, flags, image_env, server, adapter_metric)
    check_compose(args.compose, flags, image_env, server)
    if args.guide:
        with open(args.guide) as f:
            guide = f.read()
        for flag in sorted(server):
            if flag != "help" and f"`--{flag}" not in guide:
                fail(args.guide, f"--{flag} is not described")
            variable = "SPECMOE_" + flag.upper().replace("-", "_")
            if flag != "help" and variable not in guide:
                fail(args.guide, f"{variable} (--{flag}) is not in the variables table")
    if args.readme:
        check_readme(args.readme, server)
    for note in notes:
        print(f"check: note: {note}")
    for error in errors:
        print(f"check: FAIL: {error}")
    print(f"check: {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
