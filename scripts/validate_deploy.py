#!/usr/bin/env python3
"""Validate moot's deployment files offline; exit non-zero on any problem.

Checks:
  * Dockerfile / .dockerignore: base image, non-root user, the litellm cost-map setting, and that
    everything `pip install .` needs survives the .dockerignore allow-list.
  * docker-compose.yml: the Compose specification JSON schema (vendored by check-jsonschema as
    `vendor.compose-spec`), plus references: build contexts and Dockerfiles, bind-mounted files,
    depends_on targets and their healthchecks, ports and MOOT_HTTP_PORT of each moot service.
  * deploy/k8s/** (optional/ included): every manifest against the Kubernetes JSON schemas bundled
    with kubernetes-validate (strict: unknown fields are errors); CRDs (KEDA) only structurally.
    kustomization.yaml lists only files that exist (and every manifest that is meant to be listed),
    plus cross-references: selectors, Service target ports, ConfigMap/Secret names and keys,
    autoscaler targets, probes on MOOT_HTTP_PORT, resources and security settings.
  * The LiteLLM model lists (deploy/models.example.yaml, the moot-models ConfigMap).

Usage:  python scripts/validate_deploy.py [--k8s-version 1.37.0]
Needs the `test` extra (kubernetes-validate, check-jsonschema); no network access.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "deploy" / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MODELS_EXAMPLE = ROOT / "deploy" / "models.example.yaml"

IMAGE = "ghcr.io/moot/moot:0.1.0"
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
# pyproject: which modules and console scripts the image provides
# --------------------------------------------------------------------------------------------


def load_pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def check_entrypoint(r: Report, pyproject: dict[str, Any], argv: list[str], where: str) -> None:
    """`python -m pkg` must be a package the project installs; a bare command a console script."""
    package_dir: dict[str, str] = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    packages = pyproject.get("tool", {}).get("setuptools", {}).get("packages", [])
    scripts = pyproject.get("project", {}).get("scripts", {})
    if len(argv) >= 3 and argv[0] == "python" and argv[1] == "-m":
        module = argv[2]
        declared = module in package_dir and module in packages
        if r.check(declared, f"{where}: `python -m {module}` is a package installed by pyproject.toml"):
            src = ROOT / package_dir[module]
            r.check(src.is_dir(), f"{where}: source dir {rel(src)} exists")
            if not (src / "__main__.py").is_file():
                # The service code is written in parallel with these files; flag, don't fail.
                r.warn(f"{where}: {rel(src / '__main__.py')} not present yet")
    elif argv:
        r.check(argv[0] in scripts, f"{where}: `{argv[0]}` is a [project.scripts] entry point")
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


def check_docker(r: Report, pyproject: dict[str, Any]) -> None:
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
    r.check(re.search(r"pip install \.(\s|$)", runs) is not None, "project installed with `pip install .`")
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
    needed = ["pyproject.toml"]
    readme = pyproject.get("project", {}).get("readme")
    if isinstance(readme, str):
        if (ROOT / readme).is_file():
            needed.append(readme)
        else:
            r.warn(f"pyproject.toml readme {readme!r} does not exist (yet)")
    package_dir = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    needed += sorted(set(package_dir.values()))
    for path in needed:
        r.check(
            not dockerignore_excludes(patterns, path),
            f".dockerignore keeps {path} in the build context",
        )
    for path in [".venv", ".git", "tests"]:
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


def check_compose(r: Report, pyproject: dict[str, Any]) -> None:
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
        if name in SERVICES or name == "test-model":
            if isinstance(command, list):
                check_entrypoint(r, pyproject, [str(c) for c in command], where)
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


def check_kubernetes(r: Report, pyproject: dict[str, Any], k8s_version: str) -> None:
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
    for img in k.get("images") or []:
        r.check(IMAGE.startswith(img.get("name", "") + ":"), f"images override targets {img.get('name')}")

    check_k8s_references(r, pyproject, docs)


def check_k8s_references(r: Report, pyproject: dict[str, Any], docs: list[Doc]) -> None:
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
                    f"{so}: stream/consumer match shared/subjects.py for namespace {NAMESPACE}",
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
            r.check(c.get("image") == IMAGE, f"{where}: image {IMAGE}", c.get("image", ""))
            r.check(c.get("command") == ["python", "-m", module], f"{where}: runs `python -m {module}`")
            check_entrypoint(r, pyproject, c.get("command") or [], where)
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
        print("kubernetes-validate is not installed: pip install -e '.[test]'", file=sys.stderr)
        return 2
    k8s_version = args.k8s_version or kv_utils.latest_version()
    pyproject = load_pyproject()

    def models_example() -> None:
        section("deploy/models.example.yaml")
        if r.check(MODELS_EXAMPLE.is_file(), f"{rel(MODELS_EXAMPLE)} exists"):
            check_model_list(r, yaml.safe_load(MODELS_EXAMPLE.read_text()), rel(MODELS_EXAMPLE))

    steps = [
        ("Dockerfile", lambda: check_docker(r, pyproject)),
        ("models.example.yaml", models_example),
        ("docker-compose.yml", lambda: check_compose(r, pyproject)),
        ("deploy/k8s", lambda: check_kubernetes(r, pyproject, k8s_version)),
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
