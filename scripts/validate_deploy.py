#!/usr/bin/env python3
"""Validate moot's deployment files offline; exit non-zero on any problem.

Checks:
  * Dockerfile / .dockerignore: base image, non-root user, the litellm cost-map setting, one image
    per service (the SERVICE build argument installs `moot` and that service's distribution), and
    that every distribution's files survive the .dockerignore allow-list.
  * docker-compose.yml: the Compose specification JSON schema (vendored by check-jsonschema as
    `vendor.compose-spec`), plus references: build contexts and Dockerfiles, bind-mounted files,
    depends_on targets and their healthchecks, ports and MOOT_HTTP_PORT of each moot service.
  * deploy/k8s/** (optional/ included): every manifest against the Kubernetes JSON schemas bundled
    with kubernetes-validate (strict: unknown fields are errors); CRDs (KEDA) only structurally.
    kustomization.yaml lists only files that exist (and every manifest that is meant to be listed),
    plus cross-references: selectors, Service target ports, ConfigMap/Secret names and keys,
    autoscaler targets, probes on MOOT_HTTP_PORT, resources and security settings.
  * The LiteLLM model lists (deploy/models.example.yaml, the moot-models ConfigMap).
  * deploy/observability/ (neither otelcol, promtool nor Grafana runs here):
    - the OpenTelemetry Collector config: known component types, every pipeline's components
      defined and every defined one used, memory_limiter first and batch last, the OTLP ports,
      exporters that reach compose services, the services' OTEL_EXPORTER_OTLP_ENDPOINT;
    - prometheus.yml: a strict JSON schema of the keys it uses, unique jobs, every moot service
      scraped on its port, targets that are compose services;
    - Grafana: data sources (types, uids, urls of compose services), dashboard providers and
      their mounts, and each dashboard: unique uids and panel ids, grid, data source uids that
      are provisioned, PromQL parsed (promql-parser) and naming only metrics the services export
      (EXPORTED_METRICS, which tests/integration/test_metrics.py checks against a running stack),
      SQL reading tables of the recorder's schema, defined variables, links that resolve.

Usage:  python scripts/validate_deploy.py [--k8s-version 1.37.0]
Needs the `test` extra (kubernetes-validate, check-jsonschema, promql-parser); no network access.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from moot.texts import NATS_MAX_PAYLOAD_BYTES

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "deploy" / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MODELS_EXAMPLE = ROOT / "deploy" / "models.example.yaml"

IMAGE = "ghcr.io/moot/moot-{service}:0.1.0"
NAMESPACE = "moot"
# moot service -> (python module, MOOT_HTTP_PORT); same ports in compose and Kubernetes.
SERVICES = {
    "gateway": ("moot_gateway", 8000),
    "member-worker": ("moot_member_worker", 8001),
    "arbiter": ("moot_arbiter", 8002),
    "recorder": ("moot_recorder", 8003),
}
# apiVersion groups served by Kubernetes itself (schemas in kubernetes-validate); anything
# else with a dotted group is a CRD and only checked structurally.
CRD_GROUP_RE = re.compile(r"^(?!.*\.k8s\.io/)[a-z0-9-]+(\.[a-z0-9-]+)+/")
PLACEHOLDER = "replace-me"


class Report:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.ok_count = 0
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def ok(self, msg: str) -> None:
        self.ok_count += 1
        if not self.quiet:
            print(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        self.problems.append(msg)
        print(f"  FAIL  {msg}")

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        print(f"  warn  {msg}")

    def check(self, cond: bool, msg: str, detail: str = "") -> bool:
        if cond:
            self.ok(msg)
        else:
            self.fail(f"{msg}{': ' + detail if detail else ''}")
        return cond


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def section(title: str) -> None:
    print(f"\n== {title}")


# --------------------------------------------------------------------------------------------
# The workspace: which distributions each image installs, and what they provide
# --------------------------------------------------------------------------------------------

# The distributions of the repository, by folder; each holds one package named like the folder's
# import name (shared/moot, services/gateway/moot_gateway, ...).
DISTRIBUTIONS = ["shared", *(f"services/{name}" for name in SERVICES)]
# What the Dockerfile's SERVICE installs: `moot` (shared/) and the service's own distribution.
IMAGE_DISTRIBUTIONS = {
    **{name: ["shared", f"services/{name}"] for name in SERVICES},
    "test-model": ["shared"],
}
# The extra of `moot` an image names itself: a service's distribution asks for `moot[runtime]`,
# the test model's image (moot alone) must say so (the bare `moot` is the contracts and the client).
IMAGE_EXTRAS = {"test-model": "[runtime]"}


class Workspace:
    """The pyproject.toml of every distribution, and what an image built from them provides."""

    def __init__(self) -> None:
        self.pyprojects: dict[str, dict[str, Any]] = {}
        for folder in DISTRIBUTIONS:
            with (ROOT / folder / "pyproject.toml").open("rb") as f:
                self.pyprojects[folder] = tomllib.load(f)

    def packages(self, folder: str) -> dict[str, Path]:
        """Top-level package -> its source folder: a folder of the package's name (import name = path)."""
        project = self.pyprojects[folder]
        find = project.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
        out = {}
        for pattern in find.get("include", []):
            name = pattern.rstrip("*").rstrip(".")
            out[name] = ROOT / folder / name
        return out

    def provides(self, service: str) -> tuple[dict[str, Path], dict[str, str]]:
        """(packages, console scripts) of the image built with SERVICE=service."""
        packages: dict[str, Path] = {}
        scripts: dict[str, str] = {}
        for folder in IMAGE_DISTRIBUTIONS.get(service, []):
            packages |= self.packages(folder)
            scripts |= self.pyprojects[folder].get("project", {}).get("scripts", {})
        return packages, scripts


def check_entrypoint(r: Report, ws: Workspace, service: str, argv: list[str], where: str) -> None:
    """`python -m pkg.mod` must be a module the service's image installs; a bare command a console script."""
    packages, scripts = ws.provides(service)
    if len(argv) >= 3 and argv[0] == "python" and argv[1] == "-m":
        module = argv[2]
        top, *rest = module.split(".")
        if r.check(top in packages, f"{where}: `python -m {module}` is installed in the {service} image"):
            src = packages[top].joinpath(*rest)
            runnable = (src / "__main__.py").is_file() or src.with_suffix(".py").is_file()
            r.check(runnable, f"{where}: {rel(src)} runs with -m (a __main__.py or a module)")
    elif argv:
        r.check(argv[0] in scripts, f"{where}: `{argv[0]}` is a console script of the {service} image")
    else:
        r.fail(f"{where}: no command")


# --------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        lines.append((instr.upper(), args.strip()))
        buf = ""
    return lines


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching (Go filepath.Match plus `**`): `*` and `?` stop at `/`, `**` does not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: patterns apply in order to the path or any of its parent directories;
    the last one that matches wins, and `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        regex = _dockerignore_regex((pat[1:] if neg else pat).strip("/"))
        if any(regex.match(p) for p in prefixes):
            excluded = not neg
    return excluded


def check_docker(r: Report, ws: Workspace) -> None:
    section("Dockerfile / .dockerignore")
    if not r.check(DOCKERFILE.is_file(), "Dockerfile exists"):
        return
    instrs = dockerfile_instructions(DOCKERFILE.read_text())
    known = {
        "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
        "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
    }  # fmt: skip
    unknown = sorted({i for i, _ in instrs} - known)
    r.check(not unknown, f"Dockerfile: {len(instrs)} instructions, all known", f"unknown {unknown}")
    args = {}
    for instr, a in instrs:
        if instr == "ARG" and "=" in a:
            k, _, v = a.partition("=")
            args[k.strip()] = v.strip()

    def subst(s: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), s)

    stages = [i for i, (instr, _) in enumerate(instrs) if instr == "FROM"]
    r.check(bool(stages), "Dockerfile has a FROM")
    if not stages:
        return
    stage_names = set()
    for i in stages:
        words = subst(instrs[i][1]).split()
        if len(words) >= 3 and words[1].lower() == "as":
            stage_names.add(words[2])
    final = instrs[stages[-1] :]
    base = subst(final[0][1]).split()[0]
    r.check(base == "python:3.11-slim", "final stage is based on python:3.11-slim", base)
    users = [a for instr, a in final if instr == "USER"]
    user = users[-1].split(":")[0] if users else "root"
    r.check(user not in ("root", "0"), "final stage runs as a non-root user", f"USER {user}")
    r.check(user.isdigit(), "USER is numeric (lets Kubernetes verify runAsNonRoot)", user)
    env_text = " ".join(a for instr, a in final if instr == "ENV")
    r.check(
        re.search(r"(^|\s)LITELLM_LOCAL_MODEL_COST_MAP=True(\s|$)", env_text) is not None,
        "ENV LITELLM_LOCAL_MODEL_COST_MAP=True in the final stage",
    )
    runs = " ".join(a for instr, a in instrs if instr == "RUN")
    # The `case "$SERVICE" in` branches: label(s) -> what that branch installs.
    branches = {
        label: installed.split()
        for labels, installed in re.findall(r"([\w|-]+)\)\s*pip install ([^;]*);", runs)
        for label in labels.split("|")
    }
    for service, folders in IMAGE_DISTRIBUTIONS.items():
        want = [
            (f'"./shared{IMAGE_EXTRAS[service]}"' if service in IMAGE_EXTRAS else "./shared")
            if f == "shared"
            else '"./services/$SERVICE"'
            for f in folders
        ]
        got = branches.get(service)
        r.check(got == want, f"SERVICE={service} installs {' '.join(want)}", f"got {got}")
    r.check(
        "ARG SERVICE" in {f"{i} {a.split('=')[0]}" for i, a in instrs}, "the SERVICE build argument exists"
    )
    for instr, a in instrs:
        if instr == "COPY":
            m = re.search(r"--from=(\S+)", a)
            if m:
                r.check(m.group(1) in stage_names, f"COPY --from={m.group(1)} names a build stage")

    if not r.check(DOCKERIGNORE.is_file(), ".dockerignore exists"):
        return
    patterns = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    needed: list[str] = []
    for folder, project in ws.pyprojects.items():
        needed.append(f"{folder}/pyproject.toml")
        readme = project.get("project", {}).get("readme")
        if isinstance(readme, str):
            r.check((ROOT / folder / readme).is_file(), f"{folder}: readme {readme} exists")
            needed.append(f"{folder}/{readme}")
        needed += [rel(src) for src in ws.packages(folder).values()]
        needed.append(rel(ROOT / "shared" / "moot" / "records" / "migrations" / "0001_initial.sql"))
    for path in needed:
        r.check(
            not dockerignore_excludes(patterns, path),
            f".dockerignore keeps {path} in the build context",
        )
    for path in [".venv", ".git", "tests", "benchmarks", ".moot"]:
        r.check(dockerignore_excludes(patterns, path), f".dockerignore excludes {path}")


# --------------------------------------------------------------------------------------------
# LiteLLM model lists
# --------------------------------------------------------------------------------------------


def model_env_refs(data: Any) -> set[str]:
    """Environment variables a model list reads through LiteLLM's `os.environ/NAME`."""
    refs = set()
    for m in (data.get("model_list") if isinstance(data, dict) else None) or []:
        params = m.get("litellm_params") if isinstance(m, dict) else None
        for v in (params or {}).values():
            if isinstance(v, str) and v.startswith("os.environ/"):
                refs.add(v.removeprefix("os.environ/"))
    return refs


def check_model_list(r: Report, data: Any, where: str) -> set[str]:
    """Returns the environment variables the list reads through `os.environ/NAME`."""
    models = data.get("model_list") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models:
        r.fail(f"{where}: has a non-empty model_list")
        return set()
    r.ok(f"{where}: has a non-empty model_list")
    names = []
    for i, m in enumerate(models):
        ok = (
            isinstance(m, dict)
            and isinstance(m.get("model_name"), str)
            and isinstance(m.get("litellm_params"), dict)
            and isinstance(m["litellm_params"].get("model"), str)
        )
        if not ok:
            r.fail(f"{where}: model_list[{i}] needs model_name and litellm_params.model")
            continue
        names.append(m["model_name"])
    r.check(len(names) == len(set(names)), f"{where}: model names are unique ({', '.join(names)})")
    return model_env_refs(data)


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------


def env_dict(env: Any) -> dict[str, str]:
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    if isinstance(env, list):
        out = {}
        for item in env:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out
    return {}


def check_compose(r: Report, ws: Workspace) -> None:
    section("docker-compose.yml")
    if not r.check(COMPOSE_FILE.is_file(), "docker-compose.yml exists"):
        return
    # 1. The Compose specification schema, vendored by check-jsonschema (no download).
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            "--no-cache",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    r.check(
        proc.returncode == 0,
        "valid against the Compose specification (check-jsonschema --builtin-schema vendor.compose-spec)",
        (proc.stdout + proc.stderr).strip(),
    )
    # 2. References. PyYAML resolves the `<<` merge keys the file uses.
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services: dict[str, Any] = compose.get("services") or {}
    volumes = set((compose.get("volumes") or {}).keys())
    expected = {*SERVICES, "nats", "postgres", "test-model"}
    missing = expected - set(services)
    r.check(not missing, f"defines services {', '.join(sorted(expected))}", f"missing {sorted(missing)}")
    base = COMPOSE_FILE.parent

    for name, svc in services.items():
        where = f"compose service {name}"
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            ctx_path = (base / ctx).resolve()
            r.check(ctx_path.is_dir(), f"{where}: build context {rel(ctx_path)} exists")
            r.check((ctx_path / dockerfile).is_file(), f"{where}: {rel(ctx_path / dockerfile)} exists")
        for vol in svc.get("volumes") or []:
            if isinstance(vol, str):
                parts = vol.split(":")
                source, vtype = parts[0], ("bind" if parts[0].startswith((".", "/", "~")) else "volume")
                target = parts[1] if len(parts) > 1 else parts[0]
            else:
                source, vtype, target = (
                    vol.get("source", ""),
                    vol.get("type", "volume"),
                    vol.get("target", ""),
                )
            if vtype == "bind":
                src = (base / source).resolve()
                r.check(src.exists(), f"{where}: mounted file {rel(src)} -> {target} exists")
            elif source:
                r.check(source in volumes, f"{where}: named volume {source!r} is declared")
        for env_file in svc.get("env_file") or []:
            path = env_file if isinstance(env_file, str) else env_file.get("path", "")
            required = isinstance(env_file, str) or env_file.get("required", True)
            if required:
                r.check((base / path).is_file(), f"{where}: env_file {path} exists")
        depends = svc.get("depends_on") or {}
        dep_items = depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)
        for dep, cond in dep_items:
            if not r.check(dep in services, f"{where}: depends_on {dep} is a service"):
                continue
            if (cond or {}).get("condition") == "service_healthy":
                r.check(
                    "healthcheck" in services[dep],
                    f"{where}: depends_on {dep} (service_healthy) and {dep} has a healthcheck",
                )
        replicas = (svc.get("deploy") or {}).get("replicas", 1)
        if not r.check(isinstance(replicas, int), f"{where}: deploy.replicas is an integer", repr(replicas)):
            continue
        if replicas > 1:
            r.check("container_name" not in svc, f"{where}: {replicas} replicas and no container_name")
            fixed = [p for p in svc.get("ports") or [] if ":" in str(p)]
            r.check(not fixed, f"{where}: {replicas} replicas and no fixed host port", str(fixed))
        command = svc.get("command")
        if build is not None:
            built = (build.get("args") or {}).get("SERVICE") if isinstance(build, dict) else None
            if not r.check(built in IMAGE_DISTRIBUTIONS, f"{where}: builds an image with SERVICE={built}"):
                continue
            if name in IMAGE_DISTRIBUTIONS:
                r.check(built == name, f"{where}: builds its own image (SERVICE={name})", f"got {built}")
            r.check(svc.get("image") == f"moot-{built}:local", f"{where}: image moot-{built}:local")
            if isinstance(command, list):
                check_entrypoint(r, ws, built, [str(c) for c in command], where)
            else:
                r.fail(f"{where}: command should be an exec-form list")

    for name, (module, port) in SERVICES.items():
        svc = services.get(name)
        if svc is None:
            continue
        where = f"compose service {name}"
        env = env_dict(svc.get("environment"))
        r.check(svc.get("command") == ["python", "-m", module], f"{where}: runs `python -m {module}`")
        r.check(env.get("MOOT_HTTP_PORT") == str(port), f"{where}: MOOT_HTTP_PORT={port}")
        for var, want in [
            ("NATS_URL", "nats://nats:4222"),
            ("DATABASE_URL", "postgresql://moot:moot@postgres:5432/moot"),
            ("MOOT_NAMESPACE", "moot"),
        ]:
            r.check(env.get(var) == want, f"{where}: {var}={want}", f"got {env.get(var)!r}")
        hc = svc.get("healthcheck") or {}
        test = " ".join(map(str, hc.get("test") or []))
        r.check("urllib" in test and "/readyz" in test, f"{where}: healthcheck fetches /readyz with urllib")
        deps = svc.get("depends_on") or {}
        r.check(
            isinstance(deps, dict) and (deps.get("nats") or {}).get("condition") == "service_healthy",
            f"{where}: waits for nats to be healthy",
        )

    gw = services.get("gateway") or {}
    r.check("8000:8000" in [str(p) for p in gw.get("ports") or []], "compose gateway publishes 8000:8000")
    for name, n in [("member-worker", 3), ("arbiter", 2)]:
        got = ((services.get(name) or {}).get("deploy") or {}).get("replicas")
        r.check(got == n, f"compose {name}: deploy.replicas={n}", f"got {got}")

    worker = services.get("member-worker") or {}
    wenv = env_dict(worker.get("environment"))
    models_path = wenv.get("MOOT_MODELS_FILE", "")
    mounts: dict[str, Path] = {}
    for vol in worker.get("volumes") or []:
        if isinstance(vol, str) and vol.startswith("."):
            host_path, target = vol.split(":")[:2]
            mounts[target] = (base / host_path).resolve()
    if r.check(
        models_path in mounts, f"compose member-worker: MOOT_MODELS_FILE={models_path} is a mounted file"
    ):
        data = yaml.safe_load(mounts[models_path].read_text())
        if mounts[models_path] == MODELS_EXAMPLE.resolve():
            refs = model_env_refs(data)  # its structure is checked in its own section
        else:
            refs = check_model_list(r, data, rel(mounts[models_path]))
        for var in sorted(refs):
            r.check(var in wenv, f"compose member-worker: passes {var} (used as os.environ/{var})")
        api_bases = {
            m["litellm_params"].get("api_base", "")
            for m in data.get("model_list", [])
            if isinstance(m, dict) and isinstance(m.get("litellm_params"), dict)
        }
        for url in sorted(filter(None, api_bases)):
            host = re.sub(r"^\w+://([^:/]+).*$", r"\1", url)
            r.check(
                host in services, f"{rel(mounts[models_path])}: api_base host {host!r} is a compose service"
            )

    nats = services.get("nats") or {}
    r.check(
        nats.get("image") == "nats:2.10-alpine" and "-js" in (nats.get("command") or []),
        "compose nats: nats:2.10-alpine with JetStream (-js)",
    )
    command = [str(c) for c in nats.get("command") or []]
    config = command[command.index("-c") + 1] if "-c" in command[:-1] else None
    nats_mounts = _compose_mounts(nats)
    if r.check(config in nats_mounts, "compose nats: its config file (-c) is a mounted file"):
        assert config is not None
        text = nats_mounts[config].read_text() if nats_mounts[config].is_file() else ""
        match = re.search(r"^\s*max_payload\s*[:=]\s*(\d+)\s*$", text, re.MULTILINE)
        r.check(
            match is not None and int(match.group(1)) == NATS_MAX_PAYLOAD_BYTES,
            f"compose nats: max_payload {NATS_MAX_PAYLOAD_BYTES} (moot.texts.NATS_MAX_PAYLOAD_BYTES)",
            f"got {match.group(1) if match else None}",
        )
    pg = services.get("postgres") or {}
    pg_hc = " ".join(map(str, (pg.get("healthcheck") or {}).get("test") or []))
    r.check("pg_isready" in pg_hc, "compose postgres: healthcheck uses pg_isready")


# --------------------------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------------------------


class Doc:
    def __init__(self, path: Path, index: int, data: dict[str, Any]) -> None:
        self.path, self.index, self.data = path, index, data

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.data.get("metadata") or {}).get("name", ""))

    def __str__(self) -> str:
        return f"{rel(self.path)}#{self.index} {self.kind}/{self.name}"


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_containers(doc: Doc) -> Iterator[dict[str, Any]]:
    spec = ((doc.data.get("spec") or {}).get("template") or {}).get("spec") or {}
    yield from spec.get("containers") or []


def check_kubernetes(r: Report, ws: Workspace, k8s_version: str) -> None:
    section(f"deploy/k8s (Kubernetes {k8s_version} schemas from kubernetes-validate)")
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
    from kubernetes_validate.version import __version__ as kv_version

    r.ok(f"kubernetes-validate {kv_version} bundles schemas up to {kv_utils.latest_version()}")
    files = sorted(p for p in K8S_DIR.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    if not r.check(bool(files), f"{rel(K8S_DIR)} has YAML files"):
        return
    docs: list[Doc] = []
    kustomization: dict[str, Any] | None = None
    for path in files:
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as e:
            r.fail(f"{rel(path)}: YAML does not parse: {e}")
            continue
        loaded = [d for d in loaded if d is not None]
        r.check(bool(loaded), f"{rel(path)}: parses as YAML ({len(loaded)} document(s))")
        if path.name == "kustomization.yaml":
            kustomization = loaded[0] if loaded else None
            continue
        for i, d in enumerate(loaded):
            if not isinstance(d, dict):
                r.fail(f"{rel(path)}#{i}: not a mapping")
                continue
            docs.append(Doc(path, i, d))

    # --- schemas
    for doc in docs:
        d = doc.data
        has_basics = (
            isinstance(d.get("apiVersion"), str)
            and isinstance(d.get("kind"), str)
            and isinstance(d.get("metadata"), dict)
            and bool(doc.name)
        )
        if not r.check(has_basics, f"{doc}: has apiVersion, kind, metadata.name"):
            continue
        if CRD_GROUP_RE.match(d["apiVersion"]):
            r.check(
                isinstance(d.get("spec"), dict), f"{doc}: custom resource ({d['apiVersion']}), has a spec"
            )
            continue
        try:
            kubernetes_validate.validate(d, k8s_version, strict=True)
            r.ok(f"{doc}: valid {d['apiVersion']} {d['kind']} (strict)")
        except kv_utils.ValidationError as e:
            where = "/".join(str(part) for part in e.absolute_path)
            r.fail(f"{doc}: schema error at {where or '<root>'}: {e.message}")
        except kv_utils.SchemaNotFoundError as e:
            r.fail(f"{doc}: {e.message}")

    # --- kustomization
    section("deploy/k8s/kustomization.yaml")
    if not isinstance(kustomization, dict):
        r.fail("kustomization.yaml exists and is a mapping")
        return
    r.ok("kustomization.yaml exists and is a mapping")
    k = kustomization
    r.check(
        k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and k.get("kind") == "Kustomization",
        "apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization",
    )
    r.check(k.get("namespace") == NAMESPACE, f"namespace: {NAMESPACE}")
    resources = k.get("resources") or []
    r.check(len(resources) == len(set(resources)), "no resource is listed twice")
    listed: set[Path] = set()
    for res in resources:
        p = (K8S_DIR / res).resolve()
        exists = p.is_file() or (p.is_dir() and (p / "kustomization.yaml").is_file())
        r.check(exists, f"resource {res} exists")
        r.check(not res.startswith("optional/"), f"resource {res} is not under optional/")
        listed.add(p)
    for field in ("components", "crds"):
        for res in k.get(field) or []:
            r.check((K8S_DIR / res).exists(), f"{field} entry {res} exists")
    for patch in k.get("patches") or []:
        if isinstance(patch, dict) and "path" in patch:
            r.check((K8S_DIR / patch["path"]).is_file(), f"patch {patch['path']} exists")
    for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for f in (gen.get("files") or []) + (gen.get("envs") or []):
            r.check((K8S_DIR / f.split("=")[-1]).is_file(), f"generator file {f} exists")
    for path in files:
        if path.parent != K8S_DIR or path.name == "kustomization.yaml":
            continue
        if path.name.endswith((".example.yaml", ".example.yml")):
            r.check(
                path.resolve() not in listed,
                f"{rel(path)} (placeholders) is not applied by the kustomization",
            )
        else:
            r.check(path.resolve() in listed, f"{rel(path)} is listed in resources")
    applied = [doc for doc in docs if doc.path.resolve() in listed]
    r.check(
        any(doc.kind == "Namespace" and doc.name == NAMESPACE for doc in applied),
        f"the kustomization creates Namespace {NAMESPACE}",
    )
    overridden = {img.get("name") for img in k.get("images") or []}
    for service in SERVICES:
        name = IMAGE.format(service=service).partition(":")[0]
        r.check(name in overridden, f"images override covers {name}")
    for img in k.get("images") or []:
        r.check(
            any(IMAGE.format(service=s).startswith(img.get("name", "") + ":") for s in SERVICES),
            f"images override targets {img.get('name')}, a service image",
        )

    check_k8s_references(r, ws, docs)


def check_k8s_references(r: Report, ws: Workspace, docs: list[Doc]) -> None:
    section("deploy/k8s cross-references and settings")
    by_kind: dict[str, dict[str, Doc]] = {}
    for doc in docs:
        by_kind.setdefault(doc.kind, {})[doc.name] = doc
    deployments = by_kind.get("Deployment", {})
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})

    for doc in docs:
        ns = (doc.data.get("metadata") or {}).get("namespace")
        if ns is not None:
            r.check(ns == NAMESPACE, f"{doc}: namespace {NAMESPACE}", f"got {ns}")

    def secret_keys(name: str) -> set[str]:
        d = secrets[name].data
        return set((d.get("stringData") or {}).keys()) | set((d.get("data") or {}).keys())

    # Secrets hold placeholders only.
    for doc in secrets.values():
        values = [*(doc.data.get("stringData") or {}).values(), *(doc.data.get("data") or {}).values()]
        r.check(
            bool(values) and all(PLACEHOLDER in str(v) for v in values),
            f"{doc}: every value is a '{PLACEHOLDER}' placeholder",
        )

    # Deployments
    targets_scaled = set()
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa.data["spec"]["scaleTargetRef"]
        if r.check(
            ref.get("kind") == "Deployment" and ref.get("name") in deployments,
            f"{hpa}: scales an existing Deployment ({ref.get('name')})",
        ):
            targets_scaled.add(ref["name"])
    for so in by_kind.get("ScaledObject", {}).values():
        ref = so.data["spec"].get("scaleTargetRef") or {}
        r.check(ref.get("name") in deployments, f"{so}: scales an existing Deployment ({ref.get('name')})")
        for trig in so.data["spec"].get("triggers") or []:
            if trig.get("type") == "nats-jetstream":
                meta = trig.get("metadata") or {}
                need = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"}
                r.check(need <= set(meta), f"{so}: nats-jetstream trigger has {', '.join(sorted(need))}")
                r.check(
                    meta.get("stream") == f"{NAMESPACE.upper()}_JOBS"
                    and meta.get("consumer") == f"{NAMESPACE}-member-worker",
                    f"{so}: stream/consumer match moot.runtime.subjects for namespace {NAMESPACE}",
                )
                r.check(
                    all(isinstance(v, str) for v in meta.values()),
                    f"{so}: trigger metadata values are strings",
                )

    config_doc = configmaps.get("moot-config")
    config_env: dict[str, str] = dict(config_doc.data.get("data") or {}) if config_doc else {}

    for comp, (module, port) in SERVICES.items():
        name = f"moot-{comp}"
        found = deployments.get(name)
        if found is None:
            r.fail(f"Deployment {name} exists")
            continue
        r.ok(f"Deployment {name} exists")
        doc = found
        spec = doc.data["spec"]
        tmpl = spec["template"]
        pod = tmpl["spec"]
        sel = spec["selector"].get("matchLabels") or {}
        r.check(
            labels_match(sel, tmpl["metadata"].get("labels") or {}), f"{doc}: selector matches pod labels"
        )
        notes = tmpl["metadata"].get("annotations") or {}
        r.check(
            notes.get("prometheus.io/scrape") == "true"
            and notes.get("prometheus.io/port") == str(port)
            and notes.get("prometheus.io/path") == "/metrics",
            f"{doc}: pods annotated for Prometheus (/metrics on {port})",
        )
        want_replicas = {"moot-gateway": 2, "moot-arbiter": 2, "moot-recorder": 2}.get(name)
        if name in targets_scaled:
            r.check("replicas" not in spec, f"{doc}: no spec.replicas (owned by its HorizontalPodAutoscaler)")
        elif want_replicas is not None:
            r.check(spec.get("replicas") == want_replicas, f"{doc}: replicas {want_replicas}")
        psc = pod.get("securityContext") or {}
        r.check(pod.get("automountServiceAccountToken") is False, f"{doc}: no service account token mounted")
        r.check(
            (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
            f"{doc}: seccompProfile RuntimeDefault (Pod Security 'restricted')",
        )
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for v in volumes.values():
            if "configMap" in v:
                r.check(v["configMap"]["name"] in configmaps, f"{doc}: volume {v['name']} ConfigMap exists")
        containers = pod.get("containers") or []
        r.check(len(containers) == 1, f"{doc}: one container")
        for c in containers:
            where = f"{doc} container {c['name']}"
            image = IMAGE.format(service=comp)
            r.check(c.get("image") == image, f"{where}: image {image}", c.get("image", ""))
            r.check(c.get("command") == ["python", "-m", module], f"{where}: runs `python -m {module}`")
            check_entrypoint(r, ws, comp, c.get("command") or [], where)
            env = {e["name"]: e for e in c.get("env") or []}
            for ef in c.get("envFrom") or []:
                if "configMapRef" in ef:
                    r.check(
                        ef["configMapRef"]["name"] in configmaps,
                        f"{where}: envFrom ConfigMap {ef['configMapRef']['name']} exists",
                    )
                if "secretRef" in ef:
                    r.check(
                        ef["secretRef"]["name"] in secrets,
                        f"{where}: envFrom Secret {ef['secretRef']['name']} exists (secret.example.yaml)",
                    )
            for e in env.values():
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    r.check(
                        ref["name"] in secrets and ref["key"] in secret_keys(ref["name"]),
                        f"{where}: {e['name']} from Secret {ref['name']} key {ref['key']}"
                        " (secret.example.yaml)",
                    )
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    r.check(
                        ref["name"] in configmaps
                        and ref["key"] in (configmaps[ref["name"]].data.get("data") or {}),
                        f"{where}: {e['name']} from ConfigMap {ref['name']} key {ref['key']}",
                    )
            has_nats = "NATS_URL" in config_env and any(
                (ef.get("configMapRef") or {}).get("name") == "moot-config" for ef in c.get("envFrom") or []
            )
            r.check(has_nats, f"{where}: NATS_URL from ConfigMap moot-config")
            r.check(
                "DATABASE_URL" in env and "secretKeyRef" in (env["DATABASE_URL"].get("valueFrom") or {}),
                f"{where}: DATABASE_URL from a Secret",
            )
            r.check(
                (env.get("MOOT_HTTP_PORT") or {}).get("value") == str(port), f"{where}: MOOT_HTTP_PORT={port}"
            )
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
                hg = (c.get(probe) or {}).get("httpGet") or {}
                pport = hg.get("port")
                pport = ports.get(pport, pport) if isinstance(pport, str) else pport
                r.check(
                    hg.get("path") == path and pport == port,
                    f"{where}: {probe} GET {path} on MOOT_HTTP_PORT {port}",
                    f"got {hg.get('path')} on {pport}",
                )
            res = c.get("resources") or {}
            r.check(
                all(k in (res.get(kind) or {}) for kind in ("requests", "limits") for k in ("cpu", "memory")),
                f"{where}: cpu/memory requests and limits",
            )
            sc = c.get("securityContext") or {}
            r.check(
                (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True
                and sc.get("allowPrivilegeEscalation") is False
                and "ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
                f"{where}: runAsNonRoot, no privilege escalation, capabilities dropped",
            )
            if sc.get("readOnlyRootFilesystem"):
                tmp = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/tmp"]
                r.check(
                    bool(tmp) and "emptyDir" in volumes.get(tmp[0]["name"], {}),
                    f"{where}: read-only root filesystem with an emptyDir at /tmp",
                )
            else:
                r.warn(f"{where}: root filesystem is writable")
            for m in c.get("volumeMounts") or []:
                r.check(m["name"] in volumes, f"{where}: volumeMount {m['name']} has a volume")

    # The migration Job: a service image running a module that image installs.
    jobs = by_kind.get("Job", {})
    job = jobs.get("moot-migrate")
    if r.check(job is not None, "Job moot-migrate exists (the schema's migrations)") and job:
        for c in job.data["spec"]["template"]["spec"].get("containers") or []:
            where = f"{job} container {c['name']}"
            service = next((sv for sv in SERVICES if c.get("image") == IMAGE.format(service=sv)), None)
            if r.check(service is not None, f"{where}: runs a service image", c.get("image", "")):
                assert service is not None
                check_entrypoint(r, ws, service, c.get("command") or [], where)
            env = {e["name"]: e for e in c.get("env") or []}
            r.check(
                "secretKeyRef" in ((env.get("DATABASE_URL") or {}).get("valueFrom") or {}),
                f"{where}: DATABASE_URL from a Secret",
            )

    # member-worker specifics
    worker = deployments.get("moot-member-worker")
    if worker:
        pod = worker.data["spec"]["template"]["spec"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        timeout = float(config_env.get("MOOT_CALL_TIMEOUT_SECONDS", 240))
        r.check(
            grace > timeout, f"{worker}: terminationGracePeriodSeconds {grace} > call timeout {timeout:g} s"
        )
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        models_file = env.get("MOOT_MODELS_FILE", "")
        mount = next(
            (
                m
                for m in c.get("volumeMounts") or []
                if models_file.startswith(m["mountPath"].rstrip("/") + "/")
            ),
            None,
        )
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        cm_name = (
            str(((volumes.get(mount["name"]) or {}).get("configMap") or {}).get("name")) if mount else ""
        )
        key = models_file[len(mount["mountPath"].rstrip("/")) + 1 :] if mount else ""
        if r.check(
            cm_name in configmaps and key in (configmaps[cm_name].data.get("data") or {}),
            f"{worker}: MOOT_MODELS_FILE={models_file} is ConfigMap {cm_name} key {key!r}",
        ):
            data = yaml.safe_load(configmaps[cm_name].data["data"][key])
            refs = check_model_list(r, data, f"ConfigMap {cm_name} {key}")
            provided: set[str] = set()
            for ef in c.get("envFrom") or []:
                if "secretRef" in ef and ef["secretRef"]["name"] in secrets:
                    provided |= secret_keys(ef["secretRef"]["name"])
            for var in sorted(refs):
                r.check(var in provided, f"{worker}: os.environ/{var} is provided by a Secret (envFrom)")

    # Services
    for svc in by_kind.get("Service", {}).values():
        sel = svc.data["spec"].get("selector") or {}
        matches = [
            d
            for d in deployments.values()
            if labels_match(sel, d.data["spec"]["template"]["metadata"].get("labels") or {})
        ]
        if not r.check(bool(matches), f"{svc}: selector matches a Deployment"):
            continue
        names = {p.get("name") for c in pod_containers(matches[0]) for p in c.get("ports") or []}
        nums = {p.get("containerPort") for c in pod_containers(matches[0]) for p in c.get("ports") or []}
        for p in svc.data["spec"].get("ports") or []:
            tp = p.get("targetPort", p.get("port"))
            r.check(
                tp in names or tp in nums,
                f"{svc}: port {p.get('port')} -> targetPort {tp} exists on {matches[0].name}",
            )
    gw = by_kind.get("Service", {}).get("moot-gateway")
    if gw is None:
        r.fail("Service moot-gateway exists")
    else:
        r.check(any(p.get("port") == 80 for p in gw.data["spec"]["ports"]), "Service moot-gateway: port 80")

    # PodDisruptionBudgets
    pdbs = by_kind.get("PodDisruptionBudget", {})
    for pdb in pdbs.values():
        sel = (pdb.data["spec"].get("selector") or {}).get("matchLabels") or {}
        r.check(
            any(
                labels_match(sel, d.data["spec"]["template"]["metadata"].get("labels") or {})
                for d in deployments.values()
            ),
            f"{pdb}: selector matches a Deployment",
        )
    for name in ("moot-gateway", "moot-member-worker"):
        covered = any(
            name in deployments
            and labels_match(
                (p.data["spec"].get("selector") or {}).get("matchLabels") or {},
                deployments[name].data["spec"]["template"]["metadata"].get("labels") or {},
            )
            for p in pdbs.values()
        )
        r.check(covered, f"Deployment {name} has a PodDisruptionBudget")
    r.check(
        any(
            h.data["spec"]["scaleTargetRef"].get("name") == "moot-member-worker"
            for h in by_kind.get("HorizontalPodAutoscaler", {}).values()
        ),
        "member-worker has an autoscaling/v2 HorizontalPodAutoscaler",
    )


# --------------------------------------------------------------------------------------------
# deploy/observability: collector, Prometheus, Grafana
# --------------------------------------------------------------------------------------------

OBS_DIR = ROOT / "deploy" / "observability"
COLLECTOR_FILE = OBS_DIR / "otel-collector.yaml"
PROMETHEUS_FILE = OBS_DIR / "prometheus.yml"
GRAFANA_DIR = OBS_DIR / "grafana"
MIGRATIONS_DIR = ROOT / "shared" / "moot" / "records" / "migrations"

# What the services export, as Prometheus names (histograms also as _bucket, _count, _sum). Keep
# in step with moot.observability.metrics and the libraries' instruments; tests/integration/test_metrics.py
# scrapes a running stack and fails if one of these is missing, so a dashboard that passes here
# queries metrics that exist.
EXPORTED_METRICS = {
    # recorder
    "moot_runs_started_total", "moot_runs_finished_total", "moot_run_duration_seconds", "moot_run_rounds",
    "moot_recorder_batch_size", "moot_recorder_insert_duration_seconds", "moot_recorder_events_total",
    # member-worker
    "gen_ai_client_operation_duration_seconds", "gen_ai_client_token_usage", "moot_model_cost_usd_total",
    "moot_worker_calls_active",
    # arbiter
    "moot_arbiter_decisions_total", "moot_arbiter_decision_duration_seconds",
    # member-worker, arbiter, recorder
    "moot_queue_wait_seconds", "moot_consumer_pending", "moot_consumer_ack_pending",
    # the gateway: the FastAPI instrumentation
    "http_server_request_duration_seconds",
    # Prometheus itself
    "up",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

# Component types of the collector's contrib distribution that a config here may use.
COLLECTOR_COMPONENTS = {
    "receivers": {"otlp", "prometheus", "hostmetrics", "filelog", "jaeger", "zipkin", "nats"},
    "processors": {
        "batch", "memory_limiter", "attributes", "resource", "resourcedetection", "filter", "transform",
        "tail_sampling", "probabilistic_sampler", "k8sattributes", "redaction",
    },
    "exporters": {"otlp", "otlphttp", "debug", "prometheus", "prometheusremotewrite", "file", "loadbalancing"},
    "extensions": {"health_check", "pprof", "zpages", "basicauth", "bearertokenauth"},
    "connectors": {"spanmetrics", "servicegraph", "forward", "count"},
}  # fmt: skip
COLLECTOR_SIGNALS = ("traces", "metrics", "logs")

_DURATION = r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$"
# The part of Prometheus' configuration file this project uses, strictly (unknown keys are
# errors): what promtool would reject for a typo in a key or a malformed duration.
PROMETHEUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["scrape_configs"],
    "$defs": {
        "duration": {"type": "string", "pattern": _DURATION, "minLength": 2},
        "target": {"type": "string", "pattern": r"^[A-Za-z0-9.-]+:\d{1,5}$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "properties": {
        "global": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "scrape_interval": {"$ref": "#/$defs/duration"},
                "scrape_timeout": {"$ref": "#/$defs/duration"},
                "evaluation_interval": {"$ref": "#/$defs/duration"},
                "external_labels": {"$ref": "#/$defs/labels"},
            },
        },
        "rule_files": {"type": "array", "items": {"type": "string"}},
        "scrape_configs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["job_name"],
                "properties": {
                    "job_name": {"type": "string", "minLength": 1},
                    "scrape_interval": {"$ref": "#/$defs/duration"},
                    "scrape_timeout": {"$ref": "#/$defs/duration"},
                    "metrics_path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "honor_labels": {"type": "boolean"},
                    "static_configs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["targets"],
                            "properties": {
                                "targets": {"type": "array", "items": {"$ref": "#/$defs/target"}},
                                "labels": {"$ref": "#/$defs/labels"},
                            },
                        },
                    },
                    "dns_sd_configs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["names"],
                            "properties": {
                                "names": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                "type": {"enum": ["SRV", "A", "AAAA", "MX", "NS"]},
                                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "refresh_interval": {"$ref": "#/$defs/duration"},
                            },
                        },
                    },
                    "relabel_configs": {"type": "array", "items": {"type": "object"}},
                    "metric_relabel_configs": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
    },
}

GRAFANA_DATASOURCE_TYPES = {
    "prometheus",
    "jaeger",
    "tempo",
    "loki",
    "grafana-postgresql-datasource",
    "postgres",
}
GRAFANA_PANEL_TYPES = {
    "timeseries", "stat", "table", "row", "traces", "gauge", "bargauge", "text", "logs", "heatmap",
    "barchart", "piechart", "state-timeline", "nodeGraph",
}  # fmt: skip
# Variables Grafana defines itself.
GRAFANA_BUILTIN_VARS = {
    "__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms", "__from", "__to",
    "__dashboard", "__user", "__org", "__name", "__value", "__data", "__field", "__series", "__url_time_range",
    "__all", "timeFilter", "__timeFilter", "__timeFrom", "__timeTo",
}  # fmt: skip
_VAR_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)(?:[.:][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")


def _compose_services() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text()) if COMPOSE_FILE.is_file() else {}
    return dict(compose.get("services") or {})


def _compose_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a compose service's bind mounts."""
    mounts: dict[str, Path] = {}
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str) and vol.startswith("."):
            host, target = vol.split(":")[:2]
            mounts[target] = (COMPOSE_FILE.parent / host).resolve()
    return mounts


def _host_port(endpoint: str) -> tuple[str, int | None]:
    rest = re.sub(r"^\w+://", "", endpoint).split("/")[0]
    host, _, port = rest.rpartition(":")
    if not host:
        return rest, None
    return host, int(port) if port.isdigit() else None


def check_observability(r: Report) -> None:
    services = _compose_services()
    check_collector(r, services)
    check_prometheus(r, services)
    check_grafana(r, services)


def check_collector(r: Report, services: dict[str, Any]) -> None:
    section(f"{rel(COLLECTOR_FILE)} (OpenTelemetry Collector)")
    if not r.check(COLLECTOR_FILE.is_file(), f"{rel(COLLECTOR_FILE)} exists"):
        return
    config = yaml.safe_load(COLLECTOR_FILE.read_text())
    if not r.check(isinstance(config, dict), "parses as a YAML mapping"):
        return
    sections = ("receivers", "processors", "exporters", "extensions", "connectors")
    unknown = sorted(set(config) - {*sections, "service"})
    r.check(not unknown, "top-level keys are collector sections", f"unknown {unknown}")
    defined: dict[str, set[str]] = {}
    for kind in sections:
        components = config.get(kind) or {}
        if not r.check(isinstance(components, dict), f"{kind} is a mapping"):
            continue
        defined[kind] = set(components)
        for cid, settings in components.items():
            ctype = cid.split("/", 1)[0]
            r.check(
                ctype in COLLECTOR_COMPONENTS[kind],
                f"{kind[:-1]} {cid}: type {ctype!r} is a known {kind[:-1]}",
                f"known: {', '.join(sorted(COLLECTOR_COMPONENTS[kind]))}",
            )
            r.check(
                settings is None or isinstance(settings, dict), f"{kind[:-1]} {cid}: settings are a mapping"
            )
    service = config.get("service") or {}
    pipelines = service.get("pipelines") or {}
    if not r.check(
        isinstance(pipelines, dict) and bool(pipelines), "service.pipelines is a non-empty mapping"
    ):
        return
    for ext in service.get("extensions") or []:
        r.check(ext in defined.get("extensions", set()), f"service extension {ext} is defined")
    used: dict[str, set[str]] = {kind: set() for kind in sections}
    connectors = defined.get("connectors", set())
    for name, pipeline in pipelines.items():
        signal = name.split("/", 1)[0]
        r.check(
            signal in COLLECTOR_SIGNALS, f"pipeline {name}: signal is one of {', '.join(COLLECTOR_SIGNALS)}"
        )
        for kind in ("receivers", "processors", "exporters"):
            ids = pipeline.get(kind) or []
            if kind != "processors":
                r.check(bool(ids), f"pipeline {name}: has {kind}")
            for cid in ids:
                ok = cid in defined.get(kind, set()) or (kind != "processors" and cid in connectors)
                r.check(ok, f"pipeline {name}: {kind[:-1]} {cid} is defined")
                (used["connectors"] if cid in connectors else used[kind]).add(cid)
        processors = pipeline.get("processors") or []
        if "memory_limiter" in processors:
            r.check(processors[0] == "memory_limiter", f"pipeline {name}: memory_limiter comes first")
        if "batch" in processors:
            r.check(processors[-1] == "batch", f"pipeline {name}: batch comes last")
    for kind in ("receivers", "processors", "exporters", "connectors"):
        unused = sorted(defined.get(kind, set()) - used[kind])
        r.check(not unused, f"every defined {kind[:-1]} is used in a pipeline", f"unused {unused}")
    # Where the data comes from and goes to.
    protocols = ((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}
    http = _host_port(str((protocols.get("http") or {}).get("endpoint", "")))
    grpc = _host_port(str((protocols.get("grpc") or {}).get("endpoint", "")))
    r.check(http == ("0.0.0.0", 4318), "otlp receiver: OTLP/HTTP on 0.0.0.0:4318", str(http))
    r.check(grpc == ("0.0.0.0", 4317), "otlp receiver: OTLP/gRPC on 0.0.0.0:4317", str(grpc))
    traces = [p for n, p in pipelines.items() if n.split("/")[0] == "traces"]
    r.check(any("otlp" in (p.get("receivers") or []) for p in traces), "a traces pipeline receives OTLP")
    for cid, settings in (config.get("exporters") or {}).items():
        if cid.split("/")[0] in ("otlp", "otlphttp"):
            host, _ = _host_port(str((settings or {}).get("endpoint", "")))
            r.check(host in services, f"exporter {cid}: sends to the compose service {host!r}")
    col = services.get("otel-collector")
    if r.check(col is not None, "docker-compose.yml runs the collector (otel-collector)"):
        assert col is not None
        mounts = _compose_mounts(col)
        r.check(COLLECTOR_FILE.resolve() in mounts.values(), "compose otel-collector mounts this config")
        command = " ".join(col.get("command") or [])
        target = next((t for t, h in mounts.items() if h == COLLECTOR_FILE.resolve()), "?")
        r.check(f"--config={target}" in command, f"compose otel-collector runs with --config={target}")
    for name in SERVICES:
        env = env_dict((services.get(name) or {}).get("environment"))
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        r.check(
            _host_port(endpoint) == ("otel-collector", 4318) and endpoint.startswith("http://"),
            f"compose {name}: OTEL_EXPORTER_OTLP_ENDPOINT is the collector's OTLP/HTTP receiver",
            endpoint,
        )


def check_prometheus(r: Report, services: dict[str, Any]) -> None:
    section(f"{rel(PROMETHEUS_FILE)} (Prometheus)")
    if not r.check(PROMETHEUS_FILE.is_file(), f"{rel(PROMETHEUS_FILE)} exists"):
        return
    import jsonschema

    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    errors = sorted(jsonschema.Draft202012Validator(PROMETHEUS_SCHEMA).iter_errors(config), key=str)
    r.check(
        not errors,
        "valid against the schema of the Prometheus configuration keys used here (strict)",
        "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]),
    )
    if errors:
        return
    jobs = [sc["job_name"] for sc in config["scrape_configs"]]
    r.check(len(jobs) == len(set(jobs)), "job names are unique", str(jobs))
    scraped: dict[str, set[int]] = {}
    for sc in config["scrape_configs"]:
        for static in sc.get("static_configs") or []:
            for target in static["targets"]:
                host, port = _host_port(target)
                r.check(
                    host in services or host == "localhost",
                    f"job {sc['job_name']}: target {target} is a compose service",
                )
                scraped.setdefault(host, set()).add(port or 0)
        for dns in sc.get("dns_sd_configs") or []:
            r.check(
                dns.get("type") == "A" and "port" in dns, f"job {sc['job_name']}: DNS A records with a port"
            )
            for host in dns["names"]:
                r.check(host in services, f"job {sc['job_name']}: {host} is a compose service")
                scraped.setdefault(host, set()).add(int(dns.get("port", 0)))
    for name, (_, port) in SERVICES.items():
        job = next((sc for sc in config["scrape_configs"] if sc["job_name"] == f"moot-{name}"), None)
        r.check(job is not None, f"job moot-{name} scrapes {name}")
        r.check(port in scraped.get(name, set()), f"{name} is scraped on its MOOT_HTTP_PORT {port}")
        if job is not None:
            r.check(
                job.get("metrics_path", "/metrics") == "/metrics", f"job moot-{name}: metrics_path /metrics"
            )
    col = (services.get("otel-collector") or {}) if "otel-collector" in services else None
    if col is not None:
        r.check(
            8889 in scraped.get("otel-collector", set()),
            "the collector's Prometheus exporter (:8889) is scraped",
        )
    prom = services.get("prometheus")
    if r.check(prom is not None, "docker-compose.yml runs Prometheus"):
        assert prom is not None
        mounts = _compose_mounts(prom)
        target = next((t for t, h in mounts.items() if h == PROMETHEUS_FILE.resolve()), None)
        r.check(target is not None, "compose prometheus mounts this config")
        r.check(
            f"--config.file={target}" in (prom.get("command") or []),
            f"compose prometheus uses --config.file={target}",
        )


def _promql_metrics(expr: str) -> list[str]:
    """Parse a dashboard's PromQL (Grafana variables replaced by sample values); the metric names."""
    import promql_parser

    sample = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
    sample = _VAR_RE.sub("x", sample)
    ast = promql_parser.parse(sample)
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.append(node.name)

    promql_parser.walk(ast, visit)
    return names


def _exported(name: str) -> bool:
    if name in EXPORTED_METRICS:
        return True
    return any(name.endswith(s) and name[: -len(s)] in EXPORTED_METRICS for s in HISTOGRAM_SUFFIXES)


def _walk_panels(panels: list[Any]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        if isinstance(panel, dict):
            yield panel
            yield from _walk_panels(panel.get("panels") or [])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def check_grafana(r: Report, services: dict[str, Any]) -> None:
    section(f"{rel(GRAFANA_DIR)} (Grafana provisioning and dashboards)")
    grafana = services.get("grafana")
    if not r.check(grafana is not None, "docker-compose.yml runs Grafana"):
        return
    assert grafana is not None
    mounts = {h: t for t, h in _compose_mounts(grafana).items()}
    provisioning = GRAFANA_DIR / "provisioning"
    r.check(
        mounts.get(provisioning.resolve()) == "/etc/grafana/provisioning",
        f"compose grafana mounts {rel(provisioning)} at /etc/grafana/provisioning",
    )
    # Data sources
    datasources: dict[str, str] = {}  # uid -> type
    ds_files = sorted((provisioning / "datasources").glob("*.y*ml"))
    r.check(bool(ds_files), "data sources are provisioned")
    pg_env = env_dict((services.get("postgres") or {}).get("environment"))
    for path in ds_files:
        doc = yaml.safe_load(path.read_text()) or {}
        r.check(doc.get("apiVersion") == 1, f"{rel(path)}: apiVersion 1")
        for ds in doc.get("datasources") or []:
            name, uid, dtype = ds.get("name"), ds.get("uid"), ds.get("type")
            where = f"{rel(path)}: data source {name!r}"
            r.check(bool(name) and bool(uid), f"{where}: has a name and a uid")
            r.check(uid not in datasources, f"{where}: uid {uid!r} is unique")
            r.check(dtype in GRAFANA_DATASOURCE_TYPES, f"{where}: type {dtype!r} is known")
            datasources[str(uid)] = str(dtype)
            host, port = _host_port(str(ds.get("url", "")))
            r.check(host in services, f"{where}: url host {host!r} is a compose service")
            want = {"prometheus": 9090, "jaeger": 16686, "grafana-postgresql-datasource": 5432}.get(
                str(dtype)
            )
            if want:
                r.check(port == want, f"{where}: port {want}", str(port))
            if dtype == "grafana-postgresql-datasource":
                jd = ds.get("jsonData") or {}
                r.check(
                    jd.get("database") == pg_env.get("POSTGRES_DB")
                    and ds.get("user") == pg_env.get("POSTGRES_USER"),
                    f"{where}: database and user are compose postgres' ({pg_env.get('POSTGRES_DB')})",
                )
    for dtype in ("prometheus", "jaeger", "grafana-postgresql-datasource"):
        r.check(dtype in datasources.values(), f"a {dtype} data source is provisioned")
    # Dashboard providers
    dashboards_dir = GRAFANA_DIR / "dashboards"
    for path in sorted((provisioning / "dashboards").glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text()) or {}
        r.check(doc.get("apiVersion") == 1, f"{rel(path)}: apiVersion 1")
        for provider in doc.get("providers") or []:
            target = (provider.get("options") or {}).get("path")
            r.check(
                provider.get("type") == "file", f"{rel(path)}: provider {provider.get('name')} reads files"
            )
            r.check(
                mounts.get(dashboards_dir.resolve()) == target,
                f"{rel(path)}: provider path {target} is where compose mounts {rel(dashboards_dir)}",
            )
    # Dashboards
    files = sorted(dashboards_dir.glob("*.json"))
    if not r.check(
        len(files) >= 2, f"{rel(dashboards_dir)} has the dashboards (fleet overview, run drill-down)"
    ):
        return
    schema = "\n".join(p.read_text() for p in sorted(MIGRATIONS_DIR.glob("*.sql")))
    tables = set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", schema))
    uids: dict[str, Path] = {}
    loaded: list[tuple[Path, dict[str, Any]]] = []
    for path in files:
        try:
            dash = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            r.fail(f"{rel(path)}: JSON does not parse: {e}")
            continue
        uid = dash.get("uid")
        r.check(
            isinstance(uid, str) and 0 < len(uid) <= 40 and uid not in uids,
            f"{rel(path)}: unique uid {uid!r}",
        )
        uids[str(uid)] = path
        loaded.append((path, dash))
    home = env_dict(grafana.get("environment")).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        target = mounts.get(dashboards_dir.resolve(), "")
        r.check(
            home.startswith(target + "/") and (dashboards_dir / home[len(target) + 1 :]).is_file(),
            f"compose grafana: the home dashboard {home} is one of the provisioned files",
        )
    for path, dash in loaded:
        check_dashboard(r, path, dash, datasources, tables, set(uids))


def check_dashboard(
    r: Report, path: Path, dash: dict[str, Any], datasources: dict[str, str], tables: set[str], uids: set[str]
) -> None:
    where = rel(path)
    r.check(
        isinstance(dash.get("title"), str) and isinstance(dash.get("schemaVersion"), int),
        f"{where}: has a title and a schemaVersion",
    )
    panels = list(_walk_panels(dash.get("panels") or []))
    r.check(bool(panels), f"{where}: has panels")
    ids = [p.get("id") for p in panels]
    r.check(
        len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids), f"{where}: panel ids are unique"
    )
    variables = {v.get("name") for v in (dash.get("templating") or {}).get("list") or []}
    problems: list[str] = []
    metrics_used: set[str] = set()
    for panel in panels:
        pw = f"panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("type") not in GRAFANA_PANEL_TYPES:
            problems.append(f"{pw}: unknown type {panel.get('type')!r}")
        grid = panel.get("gridPos") or {}
        if (
            not all(isinstance(grid.get(k), int) for k in "xywh")
            or grid["x"] + grid["w"] > 24
            or grid["w"] < 1
        ):
            problems.append(f"{pw}: gridPos {grid} does not fit the 24-column grid")
        refs = [panel.get("datasource"), *[t.get("datasource") for t in panel.get("targets") or []]]
        for ref in refs:
            if isinstance(ref, dict) and ref.get("uid") is not None:
                if ref.get("uid") not in datasources:
                    problems.append(f"{pw}: data source uid {ref.get('uid')!r} is not provisioned")
                elif ref.get("type") and ref["type"] != datasources[ref["uid"]]:
                    problems.append(f"{pw}: data source {ref['uid']} is a {datasources[ref['uid']]}")
        ptype = datasources.get(str((panel.get("datasource") or {}).get("uid")), "")
        for target in panel.get("targets") or []:
            ttype = datasources.get(str((target.get("datasource") or {}).get("uid")), ptype)
            if ttype == "prometheus":
                try:
                    names = _promql_metrics(str(target.get("expr", "")))
                except Exception as e:
                    problems.append(f"{pw}: PromQL {target.get('expr')!r} does not parse: {e}")
                    continue
                metrics_used.update(names)
                unknown = [n for n in names if not _exported(n)]
                if unknown:
                    problems.append(f"{pw}: queries metrics no service exports: {unknown}")
            elif ttype == "grafana-postgresql-datasource":
                sql = str(target.get("rawSql", ""))
                # Table names after FROM / JOIN (not the FROM of extract(field FROM ...)).
                bare = re.sub(r"\bextract\s*\([^)]*\)", "", sql, flags=re.IGNORECASE)
                used = set(re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", bare, re.IGNORECASE))
                if not sql or not used or not used <= tables:
                    problems.append(f"{pw}: SQL reads tables {sorted(used - tables)} not in the migrations")
            elif ttype == "jaeger" and not str(target.get("query", "")).strip():
                problems.append(f"{pw}: Jaeger query is empty")
        for text in _strings(panel):
            for m in _VAR_RE.finditer(text):
                var = m.group(1) or m.group(2)
                if var not in variables and var not in GRAFANA_BUILTIN_VARS:
                    problems.append(f"{pw}: variable ${var} is not defined")
        for link in _links(panel):
            internal = link.get("internal")
            if internal and internal.get("datasourceUid") not in datasources:
                problems.append(
                    f"{pw}: link to data source {internal.get('datasourceUid')!r} is not provisioned"
                )
            found = re.match(r"^/d/([^/?]+)", str(link.get("url", "")))
            if found and found.group(1) not in uids:
                problems.append(f"{pw}: link to dashboard {found.group(1)!r} that does not exist")
    for var in (dash.get("templating") or {}).get("list") or []:
        ds = var.get("datasource")
        if isinstance(ds, dict) and ds.get("uid") not in datasources:
            problems.append(f"variable {var.get('name')}: data source {ds.get('uid')!r} is not provisioned")
    for link in dash.get("links") or []:
        found = re.match(r"^/d/([^/?]+)", str(link.get("url", "")))
        if found and found.group(1) not in uids:
            problems.append(f"dashboard link to {found.group(1)!r} that does not exist")
    r.check(
        not problems,
        f"{where}: {len(panels)} panels, queries parse and reference what exists",
        "; ".join(problems),
    )
    if dash.get("uid") == "moot-fleet":
        for needed in ("moot_runs_finished_total", "gen_ai_client_operation_duration_seconds_bucket",
                       "moot_model_cost_usd_total", "moot_consumer_pending", "moot_queue_wait_seconds_bucket",
                       "http_server_request_duration_seconds_count"):  # fmt: skip
            r.check(needed in metrics_used, f"{where}: the fleet overview shows {needed}")
    if dash.get("uid") == "moot-run":
        trace_links = [
            link
            for p in panels
            for link in _links(p)
            if (link.get("internal") or {}).get("datasourceUid") == "jaeger"
        ]
        r.check(bool(trace_links), f"{where}: the run drill-down links to the run's trace")
        r.check(
            any(p.get("type") == "traces" for p in panels), f"{where}: the run drill-down shows the trace"
        )


def _links(panel: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Data links of a panel (field defaults and overrides)."""
    config = panel.get("fieldConfig") or {}
    yield from (config.get("defaults") or {}).get("links") or []
    for override in config.get("overrides") or []:
        for prop in override.get("properties") or []:
            if prop.get("id") == "links":
                yield from prop.get("value") or []


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--k8s-version", default=None, help="Kubernetes schema version (default: newest bundled)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only problems, warnings and the summary"
    )
    args = parser.parse_args()
    started = time.monotonic()
    r = Report(quiet=args.quiet)
    try:
        from kubernetes_validate import utils as kv_utils
    except ImportError:
        print("kubernetes-validate is not installed: pip install -r requirements/test.txt", file=sys.stderr)
        return 2
    k8s_version = args.k8s_version or kv_utils.latest_version()
    ws = Workspace()

    def models_example() -> None:
        section("deploy/models.example.yaml")
        if r.check(MODELS_EXAMPLE.is_file(), f"{rel(MODELS_EXAMPLE)} exists"):
            check_model_list(r, yaml.safe_load(MODELS_EXAMPLE.read_text()), rel(MODELS_EXAMPLE))

    steps = [
        ("Dockerfile", lambda: check_docker(r, ws)),
        ("models.example.yaml", models_example),
        ("docker-compose.yml", lambda: check_compose(r, ws)),
        ("deploy/k8s", lambda: check_kubernetes(r, ws, k8s_version)),
        ("deploy/observability", lambda: check_observability(r)),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as e:  # a malformed file must be reported, not crash the other checks
            r.fail(f"{name}: checks stopped on a malformed file: {type(e).__name__}: {e}")

    elapsed = time.monotonic() - started
    print(
        f"\nvalidate_deploy: {r.ok_count} checks ok, {len(r.problems)} problem(s), "
        f"{len(r.warnings)} warning(s) in {elapsed:.1f} s"
    )
    for p in r.problems:
        print(f"  problem: {p}")
    return 1 if r.problems else 0


if __name__ == "__main__":
    sys.exit(main())
