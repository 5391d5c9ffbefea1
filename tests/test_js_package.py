"""The npm package of chloe.js (``clients/js``), run from the project's tests
so that ``make test`` (and CI) runs them: its Node unit tests (``node:test``,
fake transports and timers), its declarations checked by ``tsc``, the
script-tag build checked in as ``chloed/static/chloe.js``, the files it
ships, its version, and a fresh app that installs the packed tarball offline,
imports it with its types and bundles it with esbuild.

``make setup`` runs ``npm ci`` in ``clients/js``: that installs the tools
these tests run and fills npm's cache, which the fresh app installs from
without the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from chloed import __version__

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "js"
SERVED = ROOT / "chloed" / "static" / "chloe.js"
BIN = CLIENT / "node_modules" / ".bin"

# What `npm pack` puts in the package, and nothing else.
SHIPPED = [
    "README.md",
    "dist/chloe.global.js",
    "dist/chloe.js",
    "dist/react.js",
    "package.json",
    "types/chloe.d.ts",
    "types/react.d.ts",
]

# npm without its chatter. (npm pack runs the package's prepack, the build of
# dist/; installs run no script.)
NPM_QUIET = ["--no-audit", "--no-fund", "--no-update-notifier"]


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    if not (BIN / "esbuild").exists() or not (BIN / "tsc").exists():
        pytest.fail("clients/js has no node_modules: run `make setup` (npm ci in clients/js)")


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command; its whole output in the failure when it does not exit 0."""
    env = dict(os.environ, NO_COLOR="1", npm_config_update_notifier="false")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def package() -> dict:
    return json.loads((CLIENT / "package.json").read_text())


def test_node_unit_tests_pass():
    """The client's logic (reconnect, resume, outbox, pacing, fallback, close,
    tokens, the React hooks) passes its Node tests, with fake transports and timers."""
    result = run(["node", "--test", "--test-reporter=tap", "test/"], CLIENT)
    assert "# fail 0" in result.stdout, result.stdout
    assert "# pass 0" not in result.stdout


def test_declarations_and_typed_examples_type_check():
    """tsc --noEmit accepts the typed examples (core and React, importing the
    package by name through its exports map) and refuses the mistakes they mark."""
    run([str(BIN / "tsc"), "-p", "tsconfig.json"], CLIENT)


def test_served_chloe_js_is_what_the_source_builds():
    """chloed/static/chloe.js, which chloed serves at /chloe.js, is byte for
    byte the script-tag build of clients/js/src (rebuild with `npm run build`)."""
    run(["node", "build.mjs", "--check"], CLIENT)
    assert SERVED.read_bytes().startswith(b"/* chloe.js " + __version__.encode() + b":")


def test_package_version_follows_chloed():
    """The npm package has chloed's version, and its lockfile says the same."""
    assert package()["version"] == __version__
    lock = json.loads((CLIENT / "package-lock.json").read_text())
    assert lock["version"] == lock["packages"][""]["version"] == __version__


def test_build_tools_are_pinned_in_the_lockfile_and_nothing_is_needed_at_run_time():
    """Every devDependency is an exact version, the one package-lock.json
    holds; the package depends on nothing (React is an optional peer)."""
    meta = package()
    lock = json.loads((CLIENT / "package-lock.json").read_text())["packages"]
    for name, version in meta["devDependencies"].items():
        assert lock[f"node_modules/{name}"]["version"] == version, name
    assert "esbuild" in meta["devDependencies"] and "typescript" in meta["devDependencies"]
    assert "dependencies" not in meta
    assert meta["peerDependenciesMeta"] == {"react": {"optional": True}}


def test_pack_lists_exactly_the_files_meant_to_ship():
    """npm pack --dry-run ships the two builds, the hooks, the declarations,
    the README and package.json: no sources, tests or examples."""
    result = run(["npm", "pack", "--dry-run", "--json", *NPM_QUIET], CLIENT)
    packed = json.loads(result.stdout)[0]
    assert sorted(f["path"] for f in packed["files"]) == SHIPPED
    assert packed["name"] == package()["name"] == "chloe-client"


FRESH_APP = """\
import { Chloe, type ErrorFrame, type MessageMeta } from 'chloe-client';
import { ChloeProvider, useChannel, useChloe } from 'chloe-client/react';
import { createElement } from 'react';

interface Note { text: string }

const chloe: Chloe = new Chloe({ host: 'chloe.example', port: 8901, transports: ['longpoll'] });
chloe.subscribe<Note>('notes', (note: Note, meta: MessageMeta) => { console.log(note.text, meta.id); });
chloe.onerror((error: ErrorFrame) => { console.log(error.code); });

function Notes() {
  useChannel<Note>('notes', (note) => { console.log(note.text); });
  return null;
}
export function App() {
  const client = useChloe({ host: 'chloe.example', port: 8901 });
  return createElement(ChloeProvider, { client }, createElement(Notes));
}

console.log(JSON.stringify({ host: chloe.host, port: chloe.port, channels: chloe.channels(),
                             hooks: [typeof useChloe, typeof useChannel, typeof App] }));
"""

FRESH_TSCONFIG = {
    "compilerOptions": {
        "target": "es2020", "module": "esnext", "moduleResolution": "bundler", "lib": ["es2020", "dom"],
        "strict": True, "noEmit": True, "skipLibCheck": False, "types": [],
    },
    "include": ["src"],
}


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def test_a_fresh_app_installs_the_tarball_offline_imports_it_with_types_and_bundles_it(tmp_path):
    """npm pack makes a package that a new esbuild app installs from the
    tarball with no network (npm's cache, filled by setup, has its tools),
    type-checks against and bundles; the bundle runs, and the tarball's
    script-tag build is chloed's /chloe.js."""
    result = run(["npm", "pack", "--json", "--pack-destination", str(tmp_path), *NPM_QUIET], CLIENT)
    tarball = tmp_path / json.loads(result.stdout)[0]["filename"]
    with tarfile.open(tarball) as packed:
        member = packed.extractfile("package/dist/chloe.global.js")
        assert member is not None and member.read() == SERVED.read_bytes()

    # The app: its build tools pinned by a lockfile of its own (clients/js's,
    # so that npm's cache has them), then the package added from the tarball.
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    shutil.copy(tarball, app / tarball.name)
    tools = package()["devDependencies"]
    (app / "package.json").write_text(json.dumps(
        {"name": "fresh-app", "version": "1.0.0", "private": True, "type": "module", "devDependencies": tools}))
    lock = json.loads((CLIENT / "package-lock.json").read_text())
    lock.update(name="fresh-app", version="1.0.0")
    lock["packages"][""] = {"name": "fresh-app", "version": "1.0.0", "devDependencies": tools}
    # Each tarball's address, so that npm takes it from its cache by integrity
    # without asking the registry for the package's metadata.
    registry = run(["npm", "config", "get", "registry"], CLIENT).stdout.strip().rstrip("/")
    for where, entry in lock["packages"].items():
        if where:
            name = where.rpartition("node_modules/")[2]
            entry.setdefault("resolved", f"{registry}/{name}/-/{name.rpartition('/')[2]}-{entry['version']}.tgz")
    (app / "package-lock.json").write_text(json.dumps(lock))
    offline = ["--offline", "--ignore-scripts", *NPM_QUIET]
    run(["npm", "ci", *offline], app)
    run(["npm", "install", *offline, f"./{tarball.name}"], app)
    installed = json.loads((app / "package-lock.json").read_text())["packages"]["node_modules/chloe-client"]
    assert installed["resolved"] == f"file:{tarball.name}" and installed["integrity"] == _integrity(tarball)

    (app / "src" / "main.ts").write_text(FRESH_APP)
    (app / "tsconfig.json").write_text(json.dumps(FRESH_TSCONFIG))
    run([str(app / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"], app)
    run([str(app / "node_modules" / ".bin" / "esbuild"), "src/main.ts", "--bundle", "--format=esm",
         "--platform=browser", "--outfile=out/app.js", "--define:process.env.NODE_ENV=\"production\"",
         "--log-level=warning"], app)
    bundle = (app / "out" / "app.js").read_text()
    assert not re.search(r"^import ", bundle, re.M)   # one file: the package and React are in it
    assert "function Chloe(" in bundle
    ran = run(["node", "out/app.js"], app)
    assert json.loads(ran.stdout) == {"host": "chloe.example", "port": 8901, "channels": ["notes"],
                                      "hooks": ["function", "function", "function"]}
