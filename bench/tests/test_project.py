"""The bench's pyproject.toml names the packages bench/install.sh installs (requirements.txt), no more, no less."""

import tomllib
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent


def _requirements() -> list[str]:
    lines = (BENCH / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_pyproject_dependencies_are_the_requirements_install_sh_installs():
    project = tomllib.loads((BENCH / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(_requirements())
