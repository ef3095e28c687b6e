"""Packaging: csp_bus.adapters maps to the top-level adapters/ folder, for a regular
install and an editable one alike; no top-level ``adapters`` package is installed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import venv
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_adapters_import_as_part_of_csp_bus() -> None:
    import csp_bus.adapters

    assert Path(csp_bus.adapters.__file__).resolve().parent == ROOT / "adapters"


def test_no_top_level_adapters_package_is_installed() -> None:
    files = distribution("csp-bus").files or []
    assert not any(str(f).startswith("adapters/") for f in files)


def test_console_script_and_layer_entry_points() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["csp-bus"] == "csp_bus.cli:main"
    layers = {ep.name for ep in entry_points(group="csp_bus.layers")}
    assert "memory" in layers


def test_py_typed_is_shipped() -> None:
    spec = importlib.util.find_spec("csp_bus")
    assert spec is not None and spec.origin is not None
    assert (Path(spec.origin).parent / "py.typed").exists()


def test_importing_csp_bus_has_no_side_effects() -> None:
    code = (
        "import sys, logging, csp_bus; "
        "assert 'trio' not in sys.modules or True; "
        "assert not logging.getLogger().handlers; "
        "assert 'csp_bus.layers.memory' not in sys.modules; "
        "assert 'csp_bus.layers.redis' not in sys.modules; "
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-e"])
def test_install_modes_both_map_adapters(tmp_path: Path, editable: bool) -> None:
    """Build a fresh venv (sharing this one's packages) and install csp-bus both ways."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # Reuse the build tools of the running environment instead of downloading them.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    (next((env_dir / "lib").glob("python*")) / "site-packages" / "parent.pth").write_text(
        site + "\n"
    )
    # The venv's python runs the pip of this environment and installs into the venv.
    args = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q"]
    if editable:
        args += ["-e", str(ROOT)]
    else:
        # A regular install builds in the source tree (build/, csp_bus.egg-info): build a
        # copy, or the checkout's own metadata would change for the next test run.
        source = tmp_path / "src"
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".git", ".venv*", "bench", "tests", "build", "*.egg-info", "__pycache__"
            ),
        )
        args.append(str(source))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    check = (
        "import csp_bus.adapters, importlib.util; "
        "print(csp_bus.adapters.__file__); "
        "print(importlib.util.find_spec('adapters'))"
    )
    out = subprocess.run(
        [str(python), "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    adapters_file, top_level = out.stdout.split()
    if editable:  # served from the checkout's top-level adapters/ folder
        assert Path(adapters_file) == ROOT / "adapters" / "__init__.py"
    else:  # copied into the venv as csp_bus/adapters
        assert Path(adapters_file).is_relative_to(env_dir)
        assert adapters_file.endswith(os.path.join("csp_bus", "adapters", "__init__.py"))
    assert top_level == "None"
