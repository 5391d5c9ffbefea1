"""The chloe .deb, end to end: build, install, run, purge.

Builds the package from a clean copy of the tree (the files git tracks, as
they are in the working tree, so uncommitted edits to tracked files are
packaged) with ``dpkg-buildpackage -us -uc -b``, installs it with
``dpkg -i``, and checks that:

- the venv at /opt/venvs/chloe has chloed and its dependencies, and no test
  extras; ``twistd --help`` lists chloe;
- ``systemd-analyze verify`` accepts chloe.service and chloe.socket (it works
  on the unit files without systemd running as PID 1);
- the installed twistd, run as the ``chloe`` user with the packaged
  /etc/chloe/chloe.toml (on a free loopback port given with ``--listen``),
  answers 200 on /health and stops cleanly on SIGTERM;
- with the socket handed over the way chloe.socket does it
  (``systemd-socket-activate``), ``listen = "systemd:domain=INET:index=0"``
  works, with one process and with ``workers = 2`` (on a Redis the test
  starts, when redis-server is installed);
- ``dpkg --purge chloe`` removes the venv, the config, the state directory,
  the units and the chloe user and group.

It needs root (dpkg -i) and what ``scripts/install-system-deps`` installs
(dpkg-dev, debhelper, dh-virtualenv, systemd), and pip reaches PyPI during the
build. Under CI, or as root, anything missing is a failure, never a skip;
as another user outside CI the module is skipped. It refuses to run where a
chloe package is already installed, since it purges it at the end. On a
machine running systemd, installing the package starts chloe.service on
127.0.0.1:8901 until the purge.

Set CHLOE_DEB_UNTRACKED=1 to also package files git does not track yet (not
ignored ones), e.g. before ``git add``. About 1.5 minutes, most of it pip.
"""

from __future__ import annotations

import os
import pwd
import grp
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.packaging_support import copy_tree, run as _run

from tests.redis_server import redis_server  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
VENV = Path("/opt/venvs/chloe")
TWISTD = VENV / "bin" / "twistd"
CONF = Path("/etc/chloe/chloe.toml")
UNIT_DIR = Path("/lib/systemd/system")
BUILD_TIMEOUT = 600
TOOLS = ["dpkg-buildpackage", "dpkg", "dh", "dh_virtualenv", "systemd-analyze",
         "systemd-socket-activate", "setpriv", "git"]


def _must_run() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.geteuid() == 0


def _preconditions() -> None:
    if os.geteuid() != 0:
        message = "tests/test_deb.py installs a .deb with dpkg: run it as root"
        if _must_run():
            pytest.fail(message)
        pytest.skip(message + " (skipped: not root and not CI)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run ./scripts/install-system-deps")
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "chloe"], capture_output=True, text=True)
    if "installed" in status.stdout and "not-installed" not in status.stdout:
        pytest.fail("a chloe package is already installed here; this test would replace and purge it "
                    "(dpkg --purge chloe first if that is fine)")


def _copy_tree(dest: Path) -> None:
    """The files git tracks (plus untracked, unignored ones with
    CHLOE_DEB_UNTRACKED=1), as they are in the working tree."""
    copy_tree(dest, untracked=bool(os.environ.get("CHLOE_DEB_UNTRACKED")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, deadline: float) -> tuple[int, bytes]:
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=15) as response:
                return response.status, response.read()
        except OSError as exc:  # not listening yet
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"no answer from {url}: {last}")


def _as_chloe(*cmd: str) -> list[str]:
    """Run as the chloe user with no privileges left, roughly as the unit
    does (setpriv execs, so the PID is the server's)."""
    return ["setpriv", "--reuid=chloe", "--regid=chloe", "--init-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--", *cmd]


def _chloe_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/var/lib/chloe", "LANG": "C.UTF-8"}


def _stop(process: subprocess.Popen, timeout: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"PID {process.pid} did not exit within {timeout}s of SIGTERM")


# A clean stop: chloed drains on SIGTERM and exits 0.
CLEAN_STOP = (0,)


def _purge() -> subprocess.CompletedProcess:
    return subprocess.run(["dpkg", "--purge", "chloe"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    """The .deb built from a copy of the tree."""
    _preconditions()
    work = tmp_path_factory.mktemp("deb")
    src = work / "chloe"
    _copy_tree(src)
    _run(["dpkg-buildpackage", "-us", "-uc", "-b"], timeout=BUILD_TIMEOUT, cwd=src)
    debs = list(work.glob("chloe_*.deb"))
    assert len(debs) == 1, f"expected one chloe_*.deb in {work}: {sorted(p.name for p in work.iterdir())}"
    return debs[0]


@pytest.fixture(scope="module")
def installed(deb):
    """The package installed with dpkg -i; purged afterwards whatever
    happened (the last test purges it itself and checks the result)."""
    try:
        _run(["dpkg", "-i", str(deb)])
        yield deb
    finally:
        _purge()


def test_changelog_version_is_chloeds():
    """debian/changelog's version is chloed.__version__ (runs anywhere, no build)."""
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(r"chloe \(([^)]+)\) ", first)
    assert match, first
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "chloed" / "__init__.py").read_text())
    assert version and match.group(1) == version.group(1)


def test_package_metadata_and_contents(deb):
    """Depends on the interpreter the venv was made with; /etc/chloe/chloe.toml
    is a conffile listening on loopback; the units are shipped."""
    fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Depends"]).stdout
    assert "Package: chloe" in fields
    assert re.search(r"\bpython3\.\d+\b", fields), fields
    assert "adduser" in fields
    control = Path(deb.parent / "control")
    _run(["dpkg-deb", "-e", str(deb), str(control)])
    assert (control / "conffiles").read_text().split() == ["/etc/chloe/chloe.toml"]
    listing = _run(["dpkg-deb", "-c", str(deb)]).stdout
    for path in ["./etc/chloe/chloe.toml", "./lib/systemd/system/chloe.service",
                 "./lib/systemd/system/chloe.socket", "./opt/venvs/chloe/bin/twistd",
                 "/site-packages/twisted/plugins/chloe_plugin.py", "/site-packages/chloed/static/chloe.js"]:
        assert path in listing, f"{path} not in the package"
    for extra in ["/site-packages/pytest/", "/site-packages/playwright/", "/site-packages/hypothesis/"]:
        assert extra not in listing, f"test extra {extra} is in the package"


def test_installed_twistd_lists_chloe(installed):
    result = _run([str(TWISTD), "--help"], env=_chloe_env(), cwd="/")
    assert re.search(r"^\s+chloe\s", result.stdout, re.M), result.stdout


def test_installed_layout(installed):
    """The user and group, its home, the config readable by chloe but not by others."""
    user = pwd.getpwnam("chloe")
    assert user.pw_dir == "/var/lib/chloe"
    assert grp.getgrgid(user.pw_gid).gr_name == "chloe"
    home = Path("/var/lib/chloe").stat()
    assert home.st_uid == user.pw_uid
    conf = CONF.stat()
    assert conf.st_gid == user.pw_gid and conf.st_mode & 0o777 == 0o640
    lines = CONF.read_text().splitlines()
    assert 'listen = "tcp:8901:interface=127.0.0.1"' in lines
    # The relay spools to the state directory, the one place the unit may write.
    assert 'relay_spool = "disk"' in lines and 'relay_spool_path = "/var/lib/chloe/spool"' in lines
    assert (VENV / "lib").is_dir() and os.path.realpath(VENV / "bin" / "python3").startswith("/usr/bin/python3")


def test_units_verify(installed):
    """systemd-analyze verify: no complaint about either unit (ExecStart exists,
    every directive is known)."""
    units = [str(UNIT_DIR / "chloe.service"), str(UNIT_DIR / "chloe.socket")]
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "chloe" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
    service = (UNIT_DIR / "chloe.service").read_text()
    assert ("ExecStart=/opt/venvs/chloe/bin/twistd --nodaemon --pidfile= chloe "
            "--config /etc/chloe/chloe.toml") in service
    for setting in ["User=chloe", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "LimitNOFILE=1048576",
                    "Restart=on-failure", "KillSignal=SIGTERM", "KillMode=mixed"]:
        assert setting in service.splitlines(), setting
    stop = re.search(r"^TimeoutStopSec=(\d+)$", service, re.M)
    assert stop and int(stop.group(1)) > 10


def test_runs_as_chloe_with_the_packaged_config(installed):
    """The installed server, as user chloe, answers /health and stops cleanly
    on SIGTERM; with an app to relay to, its disk spool is in the state
    directory, chloe's own."""
    port = _free_port()
    process = subprocess.Popen(
        _as_chloe(str(TWISTD), "--nodaemon", "--pidfile=", "chloe", "--config", str(CONF),
                  "--listen", f"tcp:{port}:interface=127.0.0.1", "--app-url", "http://127.0.0.1:9/updates"),
        cwd="/var/lib/chloe", env=_chloe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        status, body = _get(f"http://127.0.0.1:{port}/health", time.monotonic() + 60)
        assert status == 200 and b'"ok"' in body
        uid = [line for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
               if line.startswith("Uid:")][0].split()[1]
        assert int(uid) == pwd.getpwnam("chloe").pw_uid
        spool = Path("/var/lib/chloe/spool")
        assert spool.stat().st_uid == pwd.getpwnam("chloe").pw_uid and (spool / "lock").exists()
    finally:
        code = _stop(process)
        output = process.stdout.read()
    assert code in CLEAN_STOP, output
    assert "Traceback" not in output, output


def test_socket_activation(installed):
    """As chloe.socket hands it over (LISTEN_FDS, LISTEN_FDNAMES=chloe.socket),
    listen = "systemd:domain=INET:index=0" serves the inherited socket."""
    port = _free_port()
    process = subprocess.Popen(
        ["systemd-socket-activate", f"--listen=127.0.0.1:{port}", "--fdname=chloe.socket",
         *_as_chloe(str(TWISTD), "--nodaemon", "--pidfile=", "chloe", "--config", str(CONF),
                    "--listen", "systemd:domain=INET:index=0")],
        cwd="/var/lib/chloe", env=_chloe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        status, _ = _get(f"http://127.0.0.1:{port}/health", time.monotonic() + 60)
        assert status == 200
        # The API answers loopback (no secret here): chloed reads the
        # inherited socket's addresses right, so domain=INET fits.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/send", data=b"channel=deb&data=hi")
        with urllib.request.urlopen(request, timeout=15) as response:
            assert 200 <= response.status < 300
    finally:
        code = _stop(process)
        output = process.stdout.read()
    assert code in CLEAN_STOP, output


def test_socket_activation_with_workers(installed, redis_server):  # noqa: F811
    """With workers = 2, the supervisor takes the socket chloe.socket hands
    over and both workers, its children, accept on it; SIGTERM stops them
    all cleanly."""
    port = _free_port()
    conf = Path("/var/lib/chloe/workers-test.toml")
    conf.write_text(f'backend = "{redis_server.url}"\nworkers = 2\nlisten = "systemd:domain=INET:index=0"\n')
    conf.chmod(0o644)
    process = subprocess.Popen(
        ["systemd-socket-activate", f"--listen=127.0.0.1:{port}", "--fdname=chloe.socket",
         *_as_chloe(str(TWISTD), "--nodaemon", "--pidfile=", "chloe", "--config", str(conf))],
        cwd="/var/lib/chloe", env=_chloe_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            status, body = _get(f"http://127.0.0.1:{port}/status", deadline)
            workers = json.loads(body).get("workers", [])
            if len(workers) == 2 and all(w["up"] for w in workers):
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        parents = {int(Path(f"/proc/{w['pid']}/stat").read_text().split()[3]) for w in workers}
        assert parents == {process.pid}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/send", data=b"channel=deb&data=hi")
        with urllib.request.urlopen(request, timeout=15) as response:
            assert 200 <= response.status < 300
    finally:
        code = _stop(process)
        output = process.stdout.read()
        conf.unlink()
    assert code in CLEAN_STOP, output
    assert "Traceback" not in output, output


def test_purge_removes_everything(installed):
    """Last: dpkg --purge leaves no venv, config, state, unit, user or group."""
    result = _purge()
    assert result.returncode == 0, result.stdout + result.stderr
    for path in [VENV, Path("/etc/chloe"), Path("/var/lib/chloe"), UNIT_DIR / "chloe.service",
                 UNIT_DIR / "chloe.socket", Path("/etc/systemd/system/multi-user.target.wants/chloe.service")]:
        assert not os.path.lexists(path), f"{path} is left after purge"
    assert subprocess.run(["getent", "passwd", "chloe"], capture_output=True).returncode != 0
    assert subprocess.run(["getent", "group", "chloe"], capture_output=True).returncode != 0
    # dpkg names each directory it could not remove because of files it did
    # not install; /opt itself may hold other things.
    leftovers = [directory for directory in re.findall(r"directory '([^']+)' not empty", result.stdout + result.stderr)
                 if directory.startswith(("/opt/venvs", "/etc/chloe", "/var/lib/chloe"))]
    assert not leftovers, result.stdout + result.stderr
