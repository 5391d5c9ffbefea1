"""The PyPI release: ``python -m build`` makes an sdist and a wheel that
``twine check`` accepts, and the wheel, installed into a fresh virtualenv,
runs ``twistd chloe``.

Builds from a copy of the tree (the files git tracks and untracked,
unignored ones, as they are in the working tree), offline:
``--no-isolation`` builds with the setuptools and wheel of the test
environment, and the wheel is built from the sdist, so a file missing from
the sdist fails here. Nothing is uploaded.

The fresh venv gets the wheel with ``pip install --no-index --no-deps``;
its dependencies are the test environment's, seen through a ``.pth`` line
(no index, no network), and the test checks that they satisfy every
``Requires-Dist`` of the wheel before it starts the server. About 10 s.
"""

from __future__ import annotations

import configparser
import email.parser
import os
import socket
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.packaging_support import copy_tree as _copy_tree, run as _run, serves_health

ROOT = Path(__file__).resolve().parent.parent


def _version() -> str:
    namespace: dict[str, str] = {}
    exec((ROOT / "chloed" / "__init__.py").read_text(), namespace)
    return namespace["__version__"]


def _name() -> str:
    """The distribution's name, as setup.cfg gives it."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]["name"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The directory holding the sdist and the wheel ``python -m build`` made."""
    work = tmp_path_factory.mktemp("release")
    src = work / "chloe"
    _copy_tree(src)
    out = work / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], cwd=work)
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("*.whl")
    return wheel


def _sdist(dist: Path) -> Path:
    (sdist,) = dist.glob("*.tar.gz")
    return sdist


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_build_makes_one_sdist_and_one_pure_wheel(dist):
    """An sdist and a py3-none-any wheel, both of chloed's version."""
    version = _version()
    assert _wheel(dist).name.endswith(f"-{version}-py3-none-any.whl")
    assert _sdist(dist).name.endswith(f"-{version}.tar.gz")


def test_twine_check_passes(dist):
    """twine check --strict: the metadata is complete and the README renders as PyPI renders it."""
    result = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))])
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_metadata(dist):
    """License, classifiers, URLs, Python requirement, the README as long
    description, and no test extra among the plain requirements."""
    meta = _metadata(_wheel(dist))
    assert meta["Name"] == _name() and meta["Version"] == _version()
    assert meta["License"] == "MIT" or meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier")
    for classifier in ["License :: OSI Approved :: MIT License", "Framework :: Twisted",
                       "Programming Language :: Python :: 3.11"]:
        assert classifier in classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Source", "Issues"} <= set(urls) and all(u.startswith("https://") for u in urls.values())
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Description-Content-Type"] == "text/x-rst"
    assert "Two commands" in meta.get_payload() and "Installing" in meta.get_payload()
    plain = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert any(r.startswith("Twisted") for r in plain)
    assert not [r for r in plain if r.split(">")[0].split("[")[0].strip() in ("pytest", "playwright", "twine")]


def test_sdist_holds_what_the_packages_build_from(dist):
    """The sdist has the code, the plugin (without an __init__.py in
    twisted/plugins), chloe.js, the OpenAPI document, the README and the
    packaged config and units."""
    with tarfile.open(_sdist(dist)) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for path in ["PKG-INFO", "setup.cfg", "pyproject.toml", "README.rst", "chloed/__init__.py",
                 "twisted/plugins/chloe_plugin.py", "chloed/static/chloe.js", "chloed/openapi.json",
                 "conf/chloe.toml", "conf/chloe.service", "conf/chloe.socket"]:
        assert path in names, f"{path} not in the sdist"
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.endswith(("dropin.cache", ".pyc"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Asks the fresh venv whether every plain requirement of the installed
# chloe is met, the way pip would (name, version, specifier); prints what
# is missing.
CHECK_REQUIREMENTS = """
import importlib.metadata as md, sys
from packaging.requirements import Requirement
missing = []
for line in md.requires(sys.argv[1]) or []:
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(line)
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{line} (have {version})")
print("\\n".join(missing))
sys.exit(1 if missing else 0)
"""


def test_wheel_in_a_fresh_venv_runs_twistd_chloe(dist, tmp_path):
    """pip installs the wheel into a new virtualenv with no index; its
    dependencies are met; twistd run there lists chloe, serves /health from
    the installed chloed (not the checkout) and stops cleanly on SIGTERM."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--disable-pip-version-check",
          "--find-links", str(dist), f"{_name()}=={_version()}"])
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    assert (site / "twisted" / "plugins" / "chloe_plugin.py").exists()
    # The dependencies: the test environment's site-packages as a plain path
    # entry, after the venv's own (its .pth files, the editable install of
    # the checkout among them, are not read).
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    check = subprocess.run([str(python), "-c", CHECK_REQUIREMENTS, _name()], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=60)
    assert check.returncode == 0, "unmet requirements:\n" + check.stdout + check.stderr
    where = _run([str(python), "-c", "import chloed; print(chloed.__file__)"], cwd=tmp_path, env=env).stdout
    assert where.startswith(str(site)), where
    twistd = [str(python), "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]
    assert "chloe " in _run([*twistd, "--help"], cwd=tmp_path, env=env).stdout
    port = _free_port()
    serves_health(
        [*twistd, "--nodaemon", "--pidfile=", "chloe", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path, env=env,
    )
