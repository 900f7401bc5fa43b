"""What a user gets from `pip install .` (not editable): every part of the package and the recipes the commands
read, working from a folder outside the checkout.

The wheel is built by pip from this checkout and installed by pip into a fresh virtual environment. Only the
dependencies (torch, transformers, ...) come from the test environment, through a .pth line: installing them
again would download gigabytes and test pip, not loramerge. A .pth line adds a folder to sys.path but runs no
.pth file inside it, so the editable install of the test environment cannot leak into the fresh one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(root)]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = root.glob("loramerge-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.check_output(
            [venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    return venv / "bin"


def run_outside(bin_dir: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, cwd=cwd, env={**environment, **env}, capture_output=True, text=True, timeout=600)


def test_the_wheel_carries_the_package_and_the_recipes(wheel_env: Path, tmp_path: Path) -> None:
    probe = (
        "import json, loramerge, loramerge.cli, loramerge.demo.run, loramerge.merge.engine, loramerge.train.run\n"
        "from loramerge.recipes import shipped_recipe\n"
        "print(json.dumps({'package': loramerge.__file__, 'align': str(shipped_recipe('demo', 'align'))}))\n"
    )
    result = run_outside(wheel_env, [str(wheel_env / "python"), "-c", probe], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    installed = wheel_env.parent
    assert Path(found["package"]).is_relative_to(installed), found  # not the checkout
    assert Path(found["align"]).is_relative_to(installed)
    # One source of truth: the installed demo recipes are the repository's files, byte for byte.
    for name in ("align", "task", "joint", "merge"):
        shipped = Path(found["align"]).parent / f"{name}.yaml"
        assert shipped.read_bytes() == (ROOT / "recipes" / "demo" / f"{name}.yaml").read_bytes(), name

    help_text = run_outside(wheel_env, [str(wheel_env / "loramerge"), "--help"], cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    for command in ("merge", "train-align", "train-task", "eval", "probe", "push", "demo", "data"):
        assert command in help_text.stdout


@pytest.mark.slow  # ~70 s on 2 cores, after the ~20 s SmolLM2 conversion
@pytest.mark.xdist_group("smollm2")
def test_the_installed_wheel_runs_the_quick_demo(wheel_env: Path, smollm2_cache: Path, tmp_path: Path) -> None:
    result = run_outside(
        wheel_env,
        [str(wheel_env / "loramerge"), "demo", "--quick", "--out", "demo"],
        cwd=tmp_path,
        LORAMERGE_CACHE=str(smollm2_cache),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "bundled:smollm2-135m" in report
    assert (tmp_path / "demo" / "recipes" / "align.yaml").is_file()
