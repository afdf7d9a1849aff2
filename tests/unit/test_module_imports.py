"""Every module of the engine, the journeys and the migrations helpers imports on its own,
in a fresh interpreter, whatever was imported before it.

An import cycle can hide behind the order in which a package's ``__init__`` imports its
modules: ``import saga`` works, while a process whose first import is ``saga.definition``
fails. So each module is imported with its top-level package's ``__init__`` left out
(an empty package stands in for it), and the packages themselves are imported as a user
would. One interpreter pre-imports the third-party libraries once, then forks a child per
module: each child starts with none of the project's modules loaded, as a fresh
interpreter would, without paying for SQLAlchemy, pydantic and aiokafka every time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("saga", "journeys", "migrations")
# Alembic runs env.py itself, with its context configured: importing it is running it;
# `python -m saga` runs the CLI.
NOT_IMPORTABLE = frozenset({"migrations.env", "saga.__main__"})
PARALLEL_CHILDREN = 2

_FORK_SERVER = r"""
import importlib, importlib.util, json, os, sys, traceback

targets, prerequisites, parallel = json.loads(sys.stdin.read())
for name in prerequisites:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # an optional dependency; the child reports it if a module needs it

def child(target):
    top = target.split(".", 1)[0]
    if target != top:
        # The package itself, unexecuted: its submodules import as if nothing else had.
        spec = importlib.util.find_spec(top)
        sys.modules[top] = importlib.util.module_from_spec(spec)
    importlib.import_module(target)

failures, running = {}, {}
pending = list(targets)
while pending or running:
    while pending and len(running) < parallel:
        target = pending.pop()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            code = 0
            try:
                child(target)
            except BaseException:
                os.write(write_end, traceback.format_exc()[-4000:].encode())
                code = 1
            os._exit(code)
        os.close(write_end)
        running[pid] = (target, read_end)
    pid, status = os.wait()
    target, read_end = running.pop(pid)
    output = os.read(read_end, 8192).decode(errors="replace")
    os.close(read_end)
    if status != 0:
        failures[target] = output or f"exit status {status}"
print(json.dumps(failures))
"""


def project_modules() -> list[str]:
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            if relative.parts[:2] == ("migrations", "versions"):
                continue
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            name = ".".join(parts)
            if name not in NOT_IMPORTABLE:
                found.append(name)
    return found


def third_party_imports(modules: list[str]) -> list[str]:
    """The outside modules the project's files import (pre-imported once, before forking)."""
    names: set[str] = set()
    for module in modules:
        path = ROOT.joinpath(*module.split("."))
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return sorted(name for name in names if name.split(".", 1)[0] not in PACKAGES)


def test_every_module_imports_on_its_own() -> None:
    modules = project_modules()
    assert {"saga", "saga.definition", "journeys.care.steps", "migrations._ddl"} <= set(modules)
    request = json.dumps([modules, third_party_imports(modules), PARALLEL_CHILDREN])
    done = subprocess.run(
        [sys.executable, "-c", _FORK_SERVER],
        input=request,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    failures: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    report = "\n\n".join(f"--- {name}\n{error}" for name, error in sorted(failures.items()))
    assert not failures, f"{len(failures)} of {len(modules)} modules fail alone:\n{report}"


DOMAIN = (
    "saga.definition",
    "saga.step",
    "saga.shapes",
    "saga.validation",
    "saga.machine",
    "saga.machine_state",
    "saga.machine_group",
    "saga.messages",
    "saga.retry",
    "saga.errors",
)


def test_the_domain_imports_no_adapter() -> None:
    """The state machine, the definitions and the envelope know nothing of PostgreSQL or
    Kafka (the layer contract another check enforces in full)."""
    for module in DOMAIN:
        source = ROOT.joinpath(*module.split(".")).with_suffix(".py").read_text()
        imported = {
            name
            for node in ast.walk(ast.parse(source))
            for name in (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
        }
        saga_imports = {name for name in imported if name.split(".", 1)[0] == "saga"}
        assert saga_imports <= set(DOMAIN), f"{module} imports {saga_imports - set(DOMAIN)}"
