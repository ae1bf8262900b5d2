"""The environment files and the CI entry point agree with pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]

# conda names the PyTorch package "pytorch"; every other name is the same on PyPI.
CONDA_TO_PYPI = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip"}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def test_environment_names_same_packages():
    project = _pyproject()["project"]
    pypi_names = {_requirement_name(r) for r in project["dependencies"]}
    pypi_names |= {_requirement_name(r) for r in project["optional-dependencies"]["test"]}

    environment = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    conda_names = set()
    for entry in environment["dependencies"]:
        if isinstance(entry, str):
            name = _requirement_name(entry)
            if name not in CONDA_ONLY:
                conda_names.add(CONDA_TO_PYPI.get(name, name))

    assert conda_names == pypi_names


def test_torch_ranges_admit_pinned_versions():
    dependencies = _pyproject()["project"]["dependencies"]
    specs = {Requirement(r).name: Requirement(r).specifier for r in dependencies}

    # The machines this project runs on cap torch at 2.14.1 and torchvision at 0.29.1.
    assert specs["torch"].contains("2.14.1")
    assert specs["torchvision"].contains("0.29.1")


def test_ci_runs_readme_test_command():
    ci_script = (REPO_ROOT / ".ci" / "run").read_text()
    readme = (REPO_ROOT / "README.md").read_text()

    assert "make test" in ci_script
    assert "make test" in readme
    assert "make report" in readme
