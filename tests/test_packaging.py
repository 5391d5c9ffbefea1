"""``twistd --help`` lists chloe after a plain ``pip install .`` (a wheel)
and after an editable install."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _twistd_help(cwd: Path, env: dict[str, str], *python_flags: str) -> str:
    result = subprocess.run(
        [sys.executable, *python_flags, "-c", "import sys; sys.argv = ['twistd', '--help'];"
         "from twisted.scripts.twistd import run; run()"],
        cwd=cwd, env=env, capture_output=True, timeout=120,
    )
    return result.stdout.decode() + result.stderr.decode()


def test_editable_install_lists_the_plugin(tmp_path):
    """From the test environment (an editable install), outside the checkout, twistd lists chloe."""
    assert "chloe " in _twistd_help(tmp_path, dict(os.environ))


def test_wheel_ships_plugin_and_static_files_and_twistd_finds_it(tmp_path):
    """The wheel holds the plugin, chloe.js and the page, and twistd finds the plugin installed from it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("chloed-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"twisted/plugins/chloe_plugin.py", "chloed/static/chloe.js", "chloed/static/index.html"} <= names
    assert "twisted/plugins/__init__.py" not in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    # -S: no .pth files, so the checkout (editable install) is not on the path;
    # only the wheel's files and the dependencies are.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    help_text = _twistd_help(tmp_path, env, "-S")
    assert "chloe " in help_text
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import chloed; print(chloed.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, timeout=60,
    )
    assert probe.stdout.decode().startswith(str(target))
