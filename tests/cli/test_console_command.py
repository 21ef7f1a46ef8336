"""The ``mixviz`` command: ``pip install -r requirements.txt`` installs it, and it runs from
any folder (README's CLI section writes ``mixviz …``, not ``python -m mixviz …``)."""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _venv_over_this_one(where: Path) -> Path:
    """A fresh venv in ``where`` that sees this interpreter's packages (torch, transformers, …)
    after its own, so installing requirements.txt into it only has mixviz left to install."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    v = sys.version_info
    own = venv / "lib" / f"python{v.major}.{v.minor}" / "site-packages"
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages())
    (own / "_outer.pth").write_text(lines)
    return venv


def test_requirements_install_a_mixviz_command_that_runs_outside_the_repo(tmp_path):
    venv = _venv_over_this_one(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "-q", "--no-deps", "--no-build-isolation", "-r", "requirements.txt"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    command = venv / "bin" / "mixviz"
    assert command.exists(), "requirements.txt did not install the mixviz console command"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [str(command), "info", "tiny", "--json"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    assert info["model"] == "tiny" and info["layers"]
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mixviz; print(mixviz.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(REPO / "mixviz")


def test_the_package_is_mixviz_alone():
    """setuptools finds ``mixviz*`` only: ui, app_pages, tests and bench are not packages."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    from setuptools import find_packages

    found = find_packages(str(REPO), **find["packages"]["find"])
    assert found and all(p == "mixviz" or p.startswith("mixviz.") for p in found)
    on_disk = {p.parent.relative_to(REPO / "mixviz") for p in (REPO / "mixviz").rglob("*.py")}
    assert {".".join(("mixviz", *d.parts)) for d in on_disk} == set(found)


def test_readme_writes_the_command_not_python_m():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(?:python -m )?mixviz \w+", readme, re.M)
    assert commands and not [c for c in commands if c.startswith("python -m")]
