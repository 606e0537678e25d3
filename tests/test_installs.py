"""Pinned installs: every dependency in pyproject.toml is locked (with hashes) at a version its range admits, the
production lock agrees with the dev lock, and the libraries whose internals the code touches have upper bounds."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# gifting/live/direct.py and gifting/web/edge.py subclass uvicorn's protocols and drive websockets' sans-I/O
# connection; redis-py's and Starlette's behaviour is relied on in detail.
INTERNALS_USED = ("uvicorn", "websockets", "starlette", "redis")
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s*\\\n\s*--hash=sha256:[0-9a-f]{64})+)", re.MULTILINE)
ANY_REQUIREMENT = re.compile(r"^[A-Za-z0-9_.-]+\s*[=<>~!]", re.MULTILINE)


def declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in lines]


def locked(name: str) -> dict[str, str]:
    """The lock file's pins, name -> version; every requirement line in it must carry hashes."""
    text = (ROOT / name).read_text()
    pins = {canonicalize_name(m[1]): m[2] for m in PIN.finditer(text)}
    assert len(pins) == len(ANY_REQUIREMENT.findall(text)), f"{name}: a requirement without ==version and hashes"
    return pins


@pytest.mark.parametrize(("lock", "extra"), [("requirements-dev.txt", "dev"), ("requirements.txt", None)])
def test_every_declared_dependency_is_locked_within_its_range(lock: str, extra: str | None) -> None:
    """Each dependency of pyproject.toml is pinned with hashes in the lock at a version its range admits
    (after editing pyproject.toml's dependencies, `make lock`)."""
    pins = locked(lock)
    wanted = declared() + (declared(extra) if extra else [])
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {lock}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{lock} pins {name}=={pins[name]}"


def test_the_production_lock_has_the_dev_locks_versions() -> None:
    """requirements.txt (a deploy's install) pins each package at the version the tests ran with."""
    dev = locked("requirements-dev.txt")
    production = locked("requirements.txt")
    assert {name: dev.get(name) for name in production} == production


@pytest.mark.parametrize("library", INTERNALS_USED)
def test_libraries_whose_internals_the_code_uses_have_an_upper_bound(library: str) -> None:
    """uvicorn, websockets, starlette and redis are bounded above, and the installed release is within the bound."""
    (requirement,) = [r for r in declared() if canonicalize_name(r.name) == library]
    assert any(spec.operator == "<" for spec in requirement.specifier), f"{requirement}: no upper bound"
    assert requirement.specifier.contains(metadata.version(library)), f"installed {library} is outside {requirement}"


def test_make_and_ci_install_from_the_lock() -> None:
    """The Makefile's install (which `make run`, `make test` and .ci/run go through) reads the hashed lock and
    installs the project itself without resolving dependencies."""
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --require-hashes -r requirements-dev.txt" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
    assert re.search(r"^\$\(STAMP\): pyproject.toml requirements-dev.txt$", makefile, re.MULTILINE)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make check" in ci and "make test" in ci and "pip install" not in ci
