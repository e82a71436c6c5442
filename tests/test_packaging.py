"""One installed name: everything imports as ``tessera.*``, the wheel's only top-level package is
``tessera``, the base install is the client without torch, and only the service's HTTP
sub-package imports the web framework."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tessera.testing.serve import local_server
from tests.docs.examples import ROOT, blocks

PROJECT = ("model", "service", "training", "client", "cli", "tiles")  # the folders, installed as tessera.<folder>
SOURCES = (*PROJECT, "tessera", "tests", "bench", "scripts", "examples")
FRAMEWORK = ("fastapi", "starlette")
CLIENT = ("client", "tiles", "cli")  # what the base install runs


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_every_import_of_the_project_goes_through_tessera():
    bare = [f"{p.relative_to(ROOT)}:{line} import {name}" for p in python_files(*SOURCES)
            for line, name in imports(p) if name.split(".")[0] in PROJECT]
    assert not bare, "import these as tessera.<name> (the only installed name):\n" + "\n".join(bare)


def test_only_the_http_sub_package_imports_the_web_framework():
    outside = [f"{p.relative_to(ROOT)}:{line} import {name}" for p in python_files("service")
               if "http" not in p.relative_to(ROOT / "service").parts
               for line, name in imports(p) if name.split(".")[0] in FRAMEWORK]
    assert not outside, "only service/http may import FastAPI or Starlette:\n" + "\n".join(outside)


def test_the_client_imports_no_torch():
    heavy = ("torch", "safetensors", "fastapi", "starlette", "uvicorn", "redis", "pydantic")
    found = [f"{p.relative_to(ROOT)}:{line} import {name}" for p in python_files(*CLIENT)
             for line, name in imports(p) if name.split(".")[0] in heavy]
    # the client's command line module lazily imports nothing but itself; the groups are in cli/main.py by name
    assert not found, "the base install (client, tiles, the command line) must not import:\n" + "\n".join(found)
    code = ("import sys, tessera; from tessera import Client, AsyncClient, tiles; import tessera.client.cli; "
            "from tessera.cli.main import build_parser; build_parser(['tessera.client.cli']); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def project_modules() -> dict[str, tuple[Path, bool]]:
    """tessera.<dotted name> -> (file, whether it is a package's __init__)."""
    found = {}
    for folder in (*PROJECT, "tessera"):
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            parts = parts if parts[0] == "tessera" else ["tessera", *parts]
            package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def test_no_import_circles_between_modules():
    """Imports anywhere in a module (in functions too) between modules, not packages: no circle."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, (path, package) in modules.items():
        if package:
            continue
        graph[name] = set()
        for _, target in imports(path):
            candidates = [target] + [f"{target}.{alias}" for alias in _imported_names(path, target)]
            graph[name] |= {c for c in candidates if c in modules and not modules[c][1] and c != name}
    circles = [sorted(component) for component in strongly_connected(graph) if len(component) > 1]
    assert not circles, f"import circles: {circles}"


def _imported_names(path: Path, module: str) -> list[str]:
    return [alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
            and node.module == module and node.level == 0 for alias in node.names]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            components.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return components


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, cwd=ROOT)
    (built,) = out.glob("tessera-*.whl")
    return built


def test_the_wheels_only_top_level_package_is_tessera(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"tessera"}, sorted(top)
    for folder in PROJECT:  # every module of every folder made it in
        for path in python_files(folder):
            assert f"tessera/{path.relative_to(ROOT).as_posix()}" in names, path
    assert any(name.startswith("tessera/service/static/demo/") for name in names)


@pytest.mark.slow
def test_the_readme_client_example_runs_from_the_wheel_alone_without_torch(wheel, tmp_path, checkpoint_dir):
    """A fresh virtual environment with the wheel and its base dependencies (from the package
    index) runs the README's client block against a real server."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert "torch" not in listed.lower() and "fastapi" not in listed.lower(), listed

    (example,) = [b for b in blocks((ROOT / "README.md").read_text(), "README.md")
                  if b.lang == "python" and "from tessera import Client" in b.code]
    sheet = tmp_path / "data/usr/share/crawl/dat/tiles/floor.png"  # the path the example reads, a 2x3 sheet here
    sheet.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(sheet)
    with local_server(checkpoint_dir, tmp_path / "server.log") as server:
        code = example.code.replace("http://127.0.0.1:8000", server.url)
        done = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert done.returncode == 0, done.stderr[-3000:]
    back = Image.open(tmp_path / "floor-back.png")
    assert back.size == (96, 64)
    missing = subprocess.run([str(env_dir / "bin" / "tessera"), "serve"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "pip install 'tessera[serve]'" in missing.stderr, missing.stderr
