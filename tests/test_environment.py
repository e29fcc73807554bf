"""The project's own files: environment.yml (conda) and pyproject.toml (pip) name the same
packages, the Makefile and the README the Pythons that pyproject.toml allows, and the linter
reads every Python file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: read the two lists with a regular expression
    tomllib = None


def normalise(requirement: str) -> str:
    """'Scikit_Image>=0.20' -> 'scikit-image' (PEP 503 names; extras, markers and versions dropped)."""
    name = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_packages(text: str) -> set[str]:
    """``[project] dependencies`` plus the ``lab`` and ``dev`` extras."""
    if tomllib is not None:
        project = tomllib.loads(text)["project"]
        extras = project["optional-dependencies"]
        requirements = list(project["dependencies"]) + list(extras["lab"]) + list(extras["dev"])
    else:
        requirements = []
        for key in ("dependencies", "lab", "dev"):
            block = re.search(rf"^{key}\s*=\s*\[(.*?)\]", text, flags=re.MULTILINE | re.DOTALL)
            requirements += re.findall(r"[\"']([^\"']+)[\"']", block.group(1)) if block else []
    return {normalise(r) for r in requirements}


def environment_packages(text: str) -> set[str]:
    """What the environment installs: the ``- pip:`` list plus the packages conda itself installs."""
    conda, pip = environment_entries(text)
    return conda | pip


def environment_pip_packages(text: str) -> set[str]:
    """The entries of the ``- pip:`` list, without pip options such as ``-e .``."""
    return environment_entries(text)[1]


def environment_conda_packages(text: str) -> set[str]:
    """The top-level ``dependencies`` entries that conda itself installs (python and pip aside)."""
    return environment_entries(text)[0]


def environment_entries(text: str) -> tuple[set[str], set[str]]:
    """(conda's packages, pip's packages), read in one pass over the ``dependencies`` block."""
    conda, pip, in_dependencies, top, pip_indent = set(), set(), False, None, None
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        indent = len(stripped) - len(stripped.lstrip())
        entry = stripped.strip()
        if indent == 0:
            in_dependencies, pip_indent = stripped == "dependencies:", None
            continue
        if not in_dependencies or not entry.startswith("- "):
            continue
        top = indent if top is None else top
        if pip_indent is not None and indent <= pip_indent:
            pip_indent = None  # the pip list has ended
        if entry == "- pip:":
            pip_indent = indent
        elif pip_indent is not None:
            value = entry[2:].strip().strip("'\"")
            if not value.startswith("-"):  # pip options such as -e .
                pip.add(normalise(value))
        elif indent == top:
            conda.add(normalise(entry[2:]))
    return conda - {"python", "pip"}, pip


def environment_python(text: str) -> str | None:
    match = re.search(r"^\s*-\s*python\s*=+\s*([\d.]+)", text, flags=re.MULTILINE)
    return match.group(1) if match else None


def test_normalise():
    assert normalise("Scikit_Image>=0.20") == "scikit-image"
    assert normalise("numpy>=1.23,<2") == "numpy"
    assert normalise("memseg.tutorial[dev] ; python_version>'3'") == "memseg-tutorial"


def test_environment_and_pyproject_name_the_same_packages():
    conda = environment_packages((ROOT / "environment.yml").read_text())
    pip = pyproject_packages((ROOT / "pyproject.toml").read_text())
    assert conda == pip, (
        f"only in environment.yml: {sorted(conda - pip)}; only in pyproject.toml: {sorted(pip - conda)}"
    )


def test_environment_pins_python_311():
    assert environment_python((ROOT / "environment.yml").read_text()) == "3.11"


def test_the_makefile_accepts_the_pythons_that_pyproject_allows():
    """The Makefile checks the Python before it makes .venv (pip's own refusal comes later and reads
    worse), so its range must follow ``requires-python`` when that changes."""
    required = re.search(r'requires-python = ">=3\.(\d+),<3\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    lowest, highest = int(required[1]), int(required[2]) - 1
    makefile = (ROOT / "Makefile").read_text()
    check = re.search(r"PY_SUPPORTED := .*\(3, (\d+)\) <= sys\.version_info\[:2\] <= \(3, (\d+)\)", makefile)
    assert (int(check[1]), int(check[2])) == (lowest, highest)
    assert makefile.count(f"3.{lowest} to 3.{highest}") == 2  # both error messages
    assert f"Python 3.{lowest} to 3.{highest}" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert lowest <= int(environment_python((ROOT / "environment.yml").read_text()).split(".")[1]) <= highest


def test_a_package_added_on_one_side_is_detected():
    environment = (ROOT / "environment.yml").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    grown_env = environment.replace("  - pip:\n", "  - pip:\n      - pandas>=2\n")
    assert environment_packages(grown_env) - pyproject_packages(pyproject) == {"pandas"}
    grown_conda = environment.replace("  - pip\n", "  - pip\n  - pyyaml>=6\n")
    assert environment_packages(grown_conda) - pyproject_packages(pyproject) == {"pyyaml"}
    grown_toml = pyproject.replace("dependencies = [\n", 'dependencies = [\n    "Pandas_Stubs>=2",\n', 1)
    assert pyproject_packages(grown_toml) - environment_packages(environment) == {"pandas-stubs"}
    assert environment_packages(environment) == pyproject_packages(pyproject)
    assert environment_conda_packages(environment) == {"noise"}  # prebuilt from conda-forge


@pytest.mark.parametrize("text", ["dependencies:\n  - python=3.11\n", ""])
def test_an_environment_without_pip_section_names_nothing(text):
    assert environment_packages(text) == set()


def test_the_linter_reads_every_python_file_of_the_project():
    """`make test` lints these folders; an exclude pattern that matches a folder name anywhere (it
    once was "data", which also hid memseg_tutorial/data/) would silently skip whole packages."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("ruff") is None:  # a GPU image or a plain `pip install .`
        pytest.skip("ruff is not installed here (pip install -e '.[dev]')")
    folders = ["memseg_tutorial", "tests", "benchmarks", "notebooks", "tools"]  # as in the Makefile
    tracked = subprocess.run(["git", "ls-files", "-z", "--", *folders], cwd=ROOT, capture_output=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: the project's own files cannot be listed")
    expected = {(ROOT / name).resolve() for name in tracked.stdout.decode().split("\0")
                if name.endswith((".py", ".ipynb"))}  # tracked files: no editor or Jupyter leftovers
    shown = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--show-files", *folders],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    linted = {Path(line.strip()).resolve() for line in shown.splitlines()
              if line.strip().endswith((".py", ".ipynb"))}
    assert len(expected) > 50 and expected - linted == set()
