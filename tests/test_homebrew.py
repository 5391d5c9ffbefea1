"""The Homebrew formula, packaging/homebrew/chloe.rb, as far as a machine
without brew can check it.

No brew runs here (nor in CI, on Debian): ``ruby -c`` checks its syntax;
``update-resources --check`` that its resources are the pinned requirements
(packaging/homebrew/requirements.txt), which cover chloe's own runtime
requirements at versions they allow; and the formula's text that its
service runs ``twistd --nodaemon chloe --config`` on the formula's config
and its test asks /health. ``brew install``, ``brew test`` and
``brew services`` were not run. Under CI, or as root, a missing ruby is a
failure (``scripts/install-system-deps`` installs it), otherwise a skip.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
HOMEBREW = ROOT / "packaging" / "homebrew"
FORMULA = HOMEBREW / "chloe.rb"


def test_formula_syntax():
    """ruby -c accepts the formula."""
    if shutil.which("ruby") is None:
        message = "ruby is missing: run ./scripts/install-system-deps"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.geteuid() == 0:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(["ruby", "-c", str(FORMULA)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stdout + result.stderr


def test_resources_are_the_pins():
    """Every pinned requirement is a resource at that version, and nothing else is."""
    result = subprocess.run([sys.executable, str(HOMEBREW / "update-resources"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    urls = re.findall(r'^\s+url "([^"]+)"$', FORMULA.read_text(), re.M)
    assert len(urls) > 20 and all(u.startswith("https://files.pythonhosted.org/packages/") for u in urls)
    assert all(re.fullmatch(r"[0-9a-f]{64}", s) for s in re.findall(r'^\s+sha256 "([^"]+)"$', FORMULA.read_text(), re.M))


def test_pins_cover_chloes_requirements():
    """Each of setup.cfg's install_requires is pinned at a version it allows."""
    pins = {}
    for line in (HOMEBREW / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = [Requirement(r) for r in config["options"]["install_requires"].split("\n") if r.strip()]
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {req}"


def test_service_and_test_blocks():
    """brew services runs twistd in the foreground on the formula's config;
    brew test starts chloed and asks /health."""
    text = FORMULA.read_text()
    service = re.search(r"^  service do\n(.*?)^  end$", text, re.M | re.S)
    assert service, "no service block"
    assert ('run [opt_libexec/"bin/twistd", "--nodaemon", "--pidfile=", "chloe", "--config", '
            'etc/"chloe/chloe.toml"]') in service.group(1)
    test = re.search(r"^  test do\n(.*?)^  end$", text, re.M | re.S)
    assert test and "/health" in test.group(1) and 'bin/"chloed"' in test.group(1)
    assert "include Language::Python::Virtualenv" in text and "virtualenv_install_with_resources" in text
