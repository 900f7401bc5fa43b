"""`loramerge --help` and each command's --help load no torch: the help is there in a fraction of a second."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "accelerate")  # safetensors (1 ms, no torch) may load
PROBE = """
import sys
from typer.testing import CliRunner
from loramerge.cli.app import app
result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
print(",".join(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize(
    "arguments", [["--help"], ["merge", "--help"], ["train-task", "--help"], ["eval", "--help"], ["data", "topics", "--help"]]
)
def test_help_imports_no_heavy_library(arguments: list[str]) -> None:
    code = PROBE.format(heavy=HEAVY)
    loaded = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "", f"loramerge {' '.join(arguments)} imported {loaded.stdout.strip()}"


def test_the_package_api_still_loads_on_first_use() -> None:
    import loramerge

    assert loramerge.merge_adapters.__module__ == "loramerge.merge.engine"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        loramerge.nothing  # noqa: B018
