"""The library's shape: installable, layered, no import-time side effects, small modules."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("unet3d_base", "data_generators", "unet3d")
# unet3d's layers, bottom to top: a module imports only from its own layer or below
LAYERS = [
    {"unet3d_base"},
    {"data_generators"},
    {"unet3d", "unet3d.config", "unet3d.env", "unet3d.keras_compat", "unet3d.precision",
     "unet3d.memory", "unet3d.evaluation", "unet3d.components"},
    {"unet3d.models"},
    {"unet3d.artifacts", "unet3d.postprocessing"},
    {"unet3d.inference"},
    {"unet3d.training", "unet3d.export"},
    {"unet3d.cli"},
]


def _modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            yield name.removesuffix(".__init__"), path


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def _layer(module: str) -> int:
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and (
                    best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    assert best is not None, f"{module} is in no layer"
    return best[0]


def test_imports_go_down_the_layers_only():
    upward = []
    for module, path in _modules():
        for imported in _imports(path):
            if _layer(imported) > _layer(module):
                upward.append(f"{module} imports {imported}")
    assert not upward, "\n".join(upward)
    data_layer = [m for m, p in _modules() if m.startswith("data_generators")
                  and any(i.split(".")[0] == "unet3d" for i in _imports(p))]
    assert not data_layer


def test_no_module_over_300_lines():
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules()}
    assert len(sizes) > 30
    assert {m: n for m, n in sizes.items() if n > 300} == {}


def _functions():
    for module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield module, node


def test_no_function_over_50_statements():
    sizes = {f"{m}.{f.name}": sum(isinstance(n, ast.stmt) for n in ast.walk(f)) - 1
             for m, f in _functions()}
    assert len(sizes) > 300
    assert {name: n for name, n in sizes.items() if n > 50} == {}


# what a function may import when it runs: a backend that is there or not (a Keras backend,
# LiteRT), and the TensorFlow-only export, which must not load TensorFlow for other backends
OPTIONAL_IMPORTS = ("tensorflow", "jax", "torch", "ai_edge_litert", "unet3d.export")


def test_function_level_imports_are_optional_backends_only():
    late = []
    for module, function in _functions():
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            late += [f"{module}.{function.name} imports {name}" for name in names
                     if name.split(".")[0] not in OPTIONAL_IMPORTS
                     and not any(name.startswith(o + ".") or name == o
                                 for o in OPTIONAL_IMPORTS)]
    assert late == []


def test_importing_changes_no_environment_or_file_descriptor():
    # TensorFlow sets variables of its own when it loads: load it first, then ours
    probe = """
import json, os, sys
def fds():
    return {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)}
def changed(env):
    return sorted(set(os.environ.items()) ^ set(env.items()))
env, before_fds = dict(os.environ), fds()
import unet3d_base, data_generators, unet3d, unet3d.cli, unet3d.config, unet3d.env
import unet3d.evaluation
light = changed(env)
import tensorflow, keras
env = dict(os.environ)
import unet3d.models, unet3d.artifacts, unet3d.inference, unet3d.training, unet3d.export
print(json.dumps({"env": light + changed(env), "fds": fds() == before_fds,
                  "tensorflow_first": "TF_ENABLE_ONEDNN_OPTS" not in os.environ}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = __import__("json").loads(done.stdout.splitlines()[-1])
    assert result == {"env": [], "fds": True, "tensorflow_first": True}


@pytest.mark.parametrize("tool", ["predict", "train"])
def test_python_dash_m_sets_the_backend_before_keras_loads(tool):
    # TensorFlow's start-up chatter is silenced only when the defaults come first
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    done = subprocess.run([sys.executable, "-m", f"unet3d.cli.{tool}", "--help"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--out" in done.stdout
    assert done.stderr == ""


def test_pyproject_pins_equal_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert sorted(declared) == sorted(pinned)
    assert all(re.fullmatch(r"[\w.\-\[\]]+==[\w.+]+", d) for d in declared
               + project["optional-dependencies"]["jax"]
               + project["optional-dependencies"]["torch"])
    scripts = project["scripts"]
    assert set(scripts) == {"unet3d-train", "unet3d-predict", "unet3d-evaluate",
                            "unet3d-export", "unet3d-postprocess", "unet3d-campaign",
                            "unet3d-ensemble"}


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv(tmp_path):
    """``pip install .`` (a wheel, not editable) then the console scripts answer --help."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          str(REPO)], capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    for script, words in (("unet3d-train", "--init-from"), ("unet3d-predict", "--tta"),
                          ("unet3d-evaluate", "--gt"), ("unet3d-export", "--precision"),
                          ("unet3d-ensemble", "--manifest")):
        done = subprocess.run([str(venv / "bin" / script), "--help"], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, (script, done.stderr[-2000:])
        assert words in done.stdout and "Traceback" not in done.stderr
