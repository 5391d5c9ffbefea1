/* Builds the client's two outputs from src/ with esbuild (pinned in
 * package-lock.json):
 *
 * - the ES modules of the npm package, dist/chloe.js and dist/react.js
 *   (src/react.js keeps importing ./chloe.js and 'react': nothing is
 *   bundled into it);
 * - the script-tag build, one plain script setting window.Chloe, written
 *   to chloed/static/chloe.js (checked in: chloed serves it at /chloe.js,
 *   and `pip install` needs no Node) and, the same bytes, to
 *   dist/chloe.global.js.
 *
 *   node build.mjs           everything (after editing src/)
 *   node build.mjs --dist    dist/ only (npm pack's prepack)
 *   node build.mjs --check   write nothing; exit 1 when chloed/static/chloe.js
 *                            is not what src/ builds
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const SERVED = fileURLToPath(new URL('../../chloed/static/chloe.js', import.meta.url));
const VERSION = JSON.parse(readFileSync(HERE + 'package.json', 'utf8')).version;
// Output syntax: ES2015 (the client is ES5 with Promise, Map and fetch; the hooks have arrows and const).
const TARGET = 'es2015';

const BANNER = `/* chloe.js ${VERSION}: the browser client of Chloe, served by chloed at /chloe.js.
 * Generated from clients/js/src/chloe.js by clients/js/build.mjs (esbuild): do not edit;
 * edit the source and run \`npm run build\` in clients/js. Also on npm as chloe-client.
 * Usage: README.rst, "The JavaScript client". */`;
const MODULE_BANNER = `/* chloe-client ${VERSION}: the client of Chloe as an ES module, built from clients/js/src by esbuild. */`;
// The TypeScript settings esbuild applies, rather than tsconfig.json's (that one
// is the typed examples'). alwaysStrict: the script starts with "use strict",
// being as strict as the module it comes from.
const TSCONFIG = { compilerOptions: { alwaysStrict: true } };

/** The script-tag build, as a string. */
export async function scriptBuild() {
  const result = await esbuild.build({
    absWorkingDir: HERE,
    entryPoints: ['src/script.js'],
    bundle: true,
    format: 'iife',
    target: TARGET,
    banner: { js: BANNER },
    tsconfigRaw: TSCONFIG,
    legalComments: 'none',
    charset: 'ascii',
    write: false,
    logLevel: 'silent',
  });
  return result.outputFiles[0].text;
}

async function moduleBuilds() {
  await esbuild.build({
    absWorkingDir: HERE,
    entryPoints: ['src/chloe.js', 'src/react.js'],
    outdir: 'dist',
    bundle: false,
    format: 'esm',
    target: TARGET,
    banner: { js: MODULE_BANNER },
    tsconfigRaw: TSCONFIG,
    legalComments: 'none',
    charset: 'ascii',
    logLevel: 'warning',
  });
}

async function main(args) {
  const script = await scriptBuild();
  if (args.includes('--check')) {
    if (readFileSync(SERVED, 'utf8') === script) return 0;
    console.error('chloed/static/chloe.js is not what clients/js/src builds: run `npm run build` in clients/js');
    return 1;
  }
  await moduleBuilds();
  mkdirSync(HERE + 'dist', { recursive: true });
  writeFileSync(HERE + 'dist/chloe.global.js', script);
  if (!args.includes('--dist')) writeFileSync(SERVED, script);
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = await main(process.argv.slice(2));
}
