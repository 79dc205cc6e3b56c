"""The image (deploy/Dockerfile; no Docker engine here, so what can be checked without building
it) and the README's deploy commands (everything but the cluster: every path, name, label, key and
tag they use is the one the manifests use)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.deploy import kustomize
from tests.deploy.manifests import (
    COMPONENTS,
    DEPLOY,
    NAMESPACE,
    ROOT,
    console_scripts,
    find,
    of_kind,
    pod_spec,
    pyproject,
    rendered,
)
from tests.deploy.test_configs import SECRET_KEYS, SECRET_NAME

DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
BASE_IMAGE = "python:3.11-slim-bookworm"

# README, "Deploy": the commands in order (continuation lines joined). NODE stands for a node's
# name. test_readme_deploy_section_is_these_commands holds the README to exactly this list.
DEPLOY_COMMANDS = [
    "docker build -f deploy/Dockerfile -t sriov-nsm:0.1.0 .",
    "kubectl label node NODE sriov-nsm/enabled=true",
    "kubectl apply -k deploy/",
    "kubectl -n sriov-nsm create secret generic torshim-switch-credentials"
    " --from-file=tor-a.password --from-file=tor-b.key --from-file=known_hosts",
    "kubectl -n sriov-nsm get pods -o wide",
    "kubectl -n sriov-nsm rollout status daemonset/nsmgr",
    "kubectl get node NODE -o jsonpath='{.status.allocatable}'",
    "kubectl apply -f deploy/examples/cnf-pod.yaml",
]


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    with open(DOCKERFILE, encoding="utf-8") as f:
        for line in f:
            s = line.rstrip("\n")
            if not buf and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if s.endswith("\\"):
                buf += s[:-1] + " "
                continue
            buf += s
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _packages() -> set[str]:
    """The top-level packages setuptools puts in the wheel: pyproject's packages.find include,
    found as setuptools does from pyproject (namespace packages too: deviceplugin/ has no
    __init__.py)."""
    from setuptools import find_namespace_packages

    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    found = find_namespace_packages(ROOT, include=include)
    return {p.split(".")[0] for p in found}


# -- the Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_bases_on_debian_12_python_311():
    froms = [args.split()[0] for word, args in _dockerfile() if word == "FROM"]
    assert froms and all(f == BASE_IMAGE for f in froms)


def test_dockerfile_copies_what_the_package_is_built_from():
    copied = set()
    for word, args in _dockerfile():
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for s in sources:
            assert os.path.exists(os.path.join(ROOT, s)), f"COPY {s}: not in the repository"
            copied.add(s.rstrip("/"))
    readme = pyproject()["project"]["readme"]
    assert copied == _packages() | {"pyproject.toml", readme}


def _copy_sources() -> list[str]:
    return [
        src.rstrip("/")
        for word, args in _dockerfile()
        if word == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    ]


def test_the_copied_files_build_a_wheel_with_every_console_script(tmp_path):
    """The image's build stage, offline: `pip wheel .` from exactly the COPY sources gives a wheel
    holding every console script's module and the package data."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    for req in map(Requirement, pyproject()["build-system"]["requires"]):
        try:
            have = version(req.name)
        except PackageNotFoundError:
            pytest.skip(f"{req.name} is not installed: the build backend is needed offline")
        if have not in req.specifier:
            pytest.skip(f"{req.name} {have} here; the build needs {req}")
    src = tmp_path / "src"
    for rel in _copy_sources():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        if os.path.isdir(os.path.join(ROOT, rel)):
            shutil.copytree(os.path.join(ROOT, rel), src / rel, ignore=ignore)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(os.path.join(ROOT, rel), src / rel)
    out = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip, "--wheel-dir", str(out), str(src)], check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for script, target in console_scripts().items():
        module = target.split(":")[0].replace(".", "/") + ".py"
        assert module in names, f"{script}: {module} is not in the image's wheel"
    assert "nicinventory/fakesysfs/sample-host.yaml" in names


def test_dockerignore_lets_exactly_the_copied_files_through():
    with open(DOCKERFILE + ".dockerignore", encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == _packages() | {"pyproject.toml", pyproject()["project"]["readme"]}


def test_dockerfile_checks_every_console_script_and_runs_one():
    (loop,) = [a for w, a in _dockerfile() if w == "RUN" and a.startswith("for cmd in")]
    names = loop.removeprefix("for cmd in").split(";")[0].split()
    assert set(names) == set(console_scripts())
    (cmd,) = [a for w, a in _dockerfile() if w == "CMD"]
    assert json.loads(cmd)[0] in console_scripts()  # exec form: a JSON list
    for component in COMPONENTS:
        c = pod_spec(component)["containers"][0]
        assert c["command"][0] in names


def test_dockerfile_user_and_tools():
    (user,) = [a for w, a in _dockerfile() if w == "USER"]
    uid = int(user.split(":")[0])
    for component in ("torshim", "nsm-registry"):
        assert pod_spec(component)["securityContext"]["runAsUser"] == uid
    installs = " ".join(a for w, a in _dockerfile() if w == "RUN" and "apt-get install" in a)
    assert "iproute2" in installs.split()  # `ip` in nsmgr's container


# -- the README's commands ------------------------------------------------------------------------


def _commands() -> list[list[str]]:
    return [shlex.split(c) for c in DEPLOY_COMMANDS]


def test_docker_build_is_the_documented_one():
    (build,) = [c for c in _commands() if c[:2] == ["docker", "build"]]
    assert build[build.index("-f") + 1] == "deploy/Dockerfile" and build[-1] == "."
    (im,) = kustomize.read_kustomization(DEPLOY)["images"]
    assert build[build.index("-t") + 1] == f"{im['newName']}:{im['newTag']}"


def test_every_repository_path_exists():
    for c in _commands():
        for arg in c:
            value = arg.split("=", 1)[-1]
            if value.startswith("deploy/") or value == ".":
                assert os.path.exists(os.path.join(ROOT, value)), f"{' '.join(c)}: {value}"
    (apply,) = [c for c in _commands() if c[:3] == ["kubectl", "apply", "-k"]]
    assert os.path.exists(os.path.join(ROOT, apply[3], "kustomization.yaml"))


def test_node_label_is_the_daemonsets_selector():
    (label,) = [c for c in _commands() if c[:2] == ["kubectl", "label"]]
    key, value = label[-1].split("=")
    for ds in of_kind("DaemonSet"):
        assert ds["spec"]["template"]["spec"]["nodeSelector"] == {key: value}


def test_secret_command_gives_the_secret_the_shim_mounts():
    (secret,) = [c for c in _commands() if "secret" in c]
    assert secret[secret.index("-n") + 1] == NAMESPACE
    assert secret[secret.index("generic") + 1] == SECRET_NAME
    keys = {a.removeprefix("--from-file=").split("=")[0] for a in secret if "--from-file" in a}
    assert keys == SECRET_KEYS
    vols = [v for v in pod_spec("torshim")["volumes"] if "secret" in v]
    assert [v["secret"]["secretName"] for v in vols] == [SECRET_NAME]
    assert not of_kind("Secret"), "no Secret in the kustomization: apply would overwrite yours"


def test_namespaces_and_objects_named_exist():
    objs = {(o["kind"].lower(), o["metadata"]["name"]) for o in rendered()}
    for c in _commands():
        if "-n" in c:
            assert c[c.index("-n") + 1] == NAMESPACE
        for arg in c:
            if re.fullmatch(r"(daemonset|deployment)/[a-z0-9-]+", arg):
                assert tuple(arg.split("/")) in objs, arg
    assert find("Namespace", NAMESPACE)


def test_readme_deploy_section_is_these_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^## Deploy\b.*?(?=^## |\Z)", text, re.S | re.M)
    if m is None:
        pytest.skip("README.md has no '## Deploy' section yet")
    commands, buf = [], ""
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", m.group(0), re.S):
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            words = shlex.split(buf + line, comments=True)
            buf = ""
            if words:
                commands.append(words)
    assert commands == _commands()
