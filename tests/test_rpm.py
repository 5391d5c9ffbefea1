"""The chloe RPM (packaging/rpm/chloe.spec): build, inspect, install into a
scratch root, verify the units there and run the server it installed.

Builds an sdist of a copy of the tree (the files git tracks and untracked,
unignored ones) and from it the RPM with Debian's ``rpmbuild -bb --nodeps``
(Debian's rpm database is empty, so Fedora's BuildRequires cannot be
checked); pip fetches chloed's dependencies from PyPI into the venv, as for
the .deb. Then it checks:

- ``rpm -qpl``: the venv at /opt/venvs/chloe with the plugin and chloe.js and
  no test extras, /etc/chloe/chloe.toml (a ``%config(noreplace)`` file), the
  units; ``rpm -qp --requires``: the interpreter the venv was made with;
- ``rpm -qp --scripts``: the chloe user made before install, the service
  enabled on a first install, stopped on removal, restarted on upgrade, the
  user, group and state directory removed;
- ``rpm -i --root`` into a scratch root (``--noscripts``: the root has no
  shell, no useradd and no systemd; its /etc/passwd has the chloe user that
  %pre would make): owners and modes, the packaged config, no build path
  left in the venv, ``systemd-analyze verify --root`` on both units (the
  ExecStart there), and the installed venv's twistd answering /health.

No Fedora or RHEL system runs here: see README.rst, "Installing". Needs root
(file owners) and what ``scripts/install-system-deps`` installs (rpm,
systemd); under CI, or as root, anything missing is a failure, never a
skip. About 40 s, most of it pip and the payload.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging_support import copy_tree as _copy_tree, run as _run, serves_health

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "packaging" / "rpm" / "chloe.spec"
VENV = "/opt/venvs/chloe"
UNIT_DIR = "/usr/lib/systemd/system"
CHLOE_UID = 990
TOOLS = ["rpmbuild", "rpm", "systemd-analyze", "git"]


def _version() -> str:
    match = re.search(r'__version__ = "([^"]+)"', (ROOT / "chloed" / "__init__.py").read_text())
    assert match
    return match.group(1)


def _preconditions() -> None:
    must = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.geteuid() == 0
    if os.geteuid() != 0:
        message = "tests/test_rpm.py installs files owned by chloe into a scratch root: run it as root"
        if must:
            pytest.fail(message)
        pytest.skip(message + " (skipped: not root and not CI)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run ./scripts/install-system-deps")


@pytest.fixture(scope="module")
def rpm_file(tmp_path_factory) -> Path:
    """The binary RPM, built from an sdist of a copy of the tree."""
    _preconditions()
    work = tmp_path_factory.mktemp("rpm")
    src = work / "chloe"
    _copy_tree(src)
    sources = work / "SOURCES"
    _run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", str(sources), str(src)], cwd=work)
    top = work / "top"
    # zstd at a low level: the default compression takes most of the time
    # on a venv this size.
    _run(["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}", "--define", f"_sourcedir {sources}",
          "--define", "_binary_payload w3T.zstdio", str(SPEC)], timeout=600, cwd=work)
    rpms = list((top / "RPMS").glob("*/chloe-*.rpm"))
    assert len(rpms) == 1, rpms
    return rpms[0]


@pytest.fixture(scope="module")
def scratch_root(rpm_file, tmp_path_factory) -> Path:
    """The RPM installed into an empty root with the chloe user that %pre makes."""
    root = tmp_path_factory.mktemp("rpmroot")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\nchloe:x:{CHLOE_UID}:{CHLOE_UID}:Chloe:/var/lib/chloe:/sbin/nologin\n")
    (root / "etc" / "group").write_text(f"root:x:0:\nchloe:x:{CHLOE_UID}:\n")
    _run(["rpm", "-i", "--root", str(root), "--nodeps", "--noscripts", str(rpm_file)])
    # systemd-analyze verify --root looks the targets the units name up in
    # the root: give it the host's.
    units = root / UNIT_DIR.lstrip("/")
    for target in Path(UNIT_DIR).glob("*.target"):
        if not (units / target.name).exists():
            shutil.copy2(target, units / target.name)
    return root


def test_spec_version_is_chloeds():
    """The spec's Version is chloed.__version__ (runs anywhere, no build)."""
    match = re.search(r"^Version:\s+(\S+)$", SPEC.read_text(), re.M)
    assert match and match.group(1) == _version()


def test_package_files_and_requirements(rpm_file):
    """The venv, the config as %config(noreplace), the units; the interpreter
    required by path; no test extras."""
    listing = _run(["rpm", "-qpl", str(rpm_file)]).stdout.splitlines()
    for path in ["/etc/chloe/chloe.toml", f"{UNIT_DIR}/chloe.service", f"{UNIT_DIR}/chloe.socket",
                 f"{VENV}/bin/twistd", f"{VENV}/bin/python", "/var/lib/chloe"]:
        assert path in listing, f"{path} not in the package"
    text = "\n".join(listing)
    for part in ["/site-packages/twisted/plugins/chloe_plugin.py", "/site-packages/chloed/static/chloe.js"]:
        assert part in text
    for extra in ["/site-packages/pytest/", "/site-packages/playwright/", "/site-packages/hypothesis/"]:
        assert extra not in text, f"test extra {extra} is in the package"
    flags = _run(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", str(rpm_file)]).stdout
    assert re.search(r"^/etc/chloe/chloe\.toml c\S*n", flags, re.M), "chloe.toml is not %config(noreplace)"
    assert _run(["rpm", "-qp", "--configfiles", str(rpm_file)]).stdout.split() == ["/etc/chloe/chloe.toml"]
    requires = _run(["rpm", "-qp", "--requires", str(rpm_file)]).stdout
    assert re.search(r"^/usr/bin/python3\.\d+$", requires, re.M), requires


def test_scriptlets(rpm_file):
    """The user before install; on a first install the service enabled; on
    removal stopped and disabled, the plugin cache, state, user and group
    removed; on upgrade a restart."""
    scripts = _run(["rpm", "-qp", "--scripts", str(rpm_file)]).stdout
    sections = dict(re.findall(r"^(\w+) scriptlet \(using /bin/sh\):\n(.*?)(?=^\w+ scriptlet|\Z)", scripts, re.M | re.S))
    assert set(sections) == {"preinstall", "postinstall", "preuninstall", "postuninstall"}, scripts
    assert "useradd -r -g chloe -d /var/lib/chloe" in sections["preinstall"]
    assert "systemctl enable --now chloe.service" in sections["postinstall"]
    assert "getPlugins" in sections["postinstall"]
    assert "systemctl disable --now chloe.service chloe.socket" in sections["preuninstall"]
    assert "dropin.cache" in sections["preuninstall"]
    assert "try-restart chloe.service" in sections["postuninstall"]
    assert "rm -rf /var/lib/chloe" in sections["postuninstall"] and "userdel chloe" in sections["postuninstall"]
    for name, body in sections.items():
        syntax = subprocess.run(["sh", "-n"], input=body, capture_output=True, text=True)
        assert syntax.returncode == 0, f"{name}: {syntax.stderr}"


def test_installed_layout(scratch_root):
    """Owners and modes as the .deb's; the packaged config listens on
    loopback and spools to the state directory; no build path is left in
    the venv's scripts or pyvenv.cfg."""
    conf = scratch_root / "etc" / "chloe" / "chloe.toml"
    assert conf.stat().st_uid == 0 and conf.stat().st_gid == CHLOE_UID and conf.stat().st_mode & 0o777 == 0o640
    state = (scratch_root / "var" / "lib" / "chloe").stat()
    assert state.st_uid == CHLOE_UID and state.st_mode & 0o777 == 0o750
    lines = conf.read_text().splitlines()
    assert 'listen = "tcp:8901:interface=127.0.0.1"' in lines
    assert 'relay_spool = "disk"' in lines and 'relay_spool_path = "/var/lib/chloe/spool"' in lines
    venv = scratch_root / VENV.lstrip("/")
    assert (venv / "bin" / "twistd").read_text().splitlines()[0] == f"#!{VENV}/bin/python"
    leaked = subprocess.run(["grep", "-rlI", "BUILDROOT", str(venv / "bin"), str(venv / "pyvenv.cfg")],
                            capture_output=True, text=True)
    assert leaked.stdout == "", leaked.stdout
    assert os.path.realpath(venv / "bin" / "python3").startswith("/usr/bin/python3")


def test_units_verify_in_the_root(scratch_root):
    """systemd-analyze verify --root: both units are accepted and the
    ExecStart they name exists in the installed tree."""
    result = subprocess.run(["systemd-analyze", "verify", f"--root={scratch_root}",
                             f"{UNIT_DIR}/chloe.service", f"{UNIT_DIR}/chloe.socket"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "chloe" not in result.stdout + result.stderr, result.stdout + result.stderr
    service = (scratch_root / UNIT_DIR.lstrip("/") / "chloe.service").read_text()
    assert f"ExecStart={VENV}/bin/twistd --nodaemon --pidfile= chloe --config /etc/chloe/chloe.toml" in service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_installed_venv_serves_health(scratch_root, tmp_path):
    """The venv the RPM installed, run where it lies (its python finds its
    own pyvenv.cfg), with the packaged config (its spool moved to a scratch
    directory), serves /health and stops cleanly on SIGTERM."""
    python = scratch_root / VENV.lstrip("/") / "bin" / "python"
    conf = tmp_path / "chloe.toml"
    packaged = (scratch_root / "etc" / "chloe" / "chloe.toml").read_text()
    conf.write_text(packaged.replace('"/var/lib/chloe/spool"', f'"{tmp_path}/spool"'))
    port = _free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    twistd = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
    serves_health(
        [str(python), "-c", twistd, "--nodaemon", "--pidfile=", "chloe", "--config", str(conf),
         "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path, env=env,
    )
    probe = _run([str(python), "-c", "import chloed; print(chloed.__file__)"], cwd=tmp_path, env=env).stdout
    assert probe.startswith(str(scratch_root)), probe
