#!/usr/bin/env node
// `npm pack`'s prepack step (with native/build.mjs): vendors onnxruntime-node's JavaScript and its
// linux-x64 binaries into vendor/onnxruntime-node/, which the package ships and
// src/runtime/backends/ort.ts loads where npm did not install onnxruntime-node.
//
// Why glmtool vendors it (issue 11, item 10): onnxruntime-node's postinstall downloads ONNX
// Runtime's CUDA provider from nuget.org on linux-x64, which glmtool never uses (its GPU path is
// its own engine), and where nuget.org cannot be reached it fails `npm install -g glmtool`. A
// package cannot switch a dependency's script off for its users, so the package carries the
// files that script would keep (the CPU binding and libonnxruntime, MIT, from the npm package
// itself: nothing is rebuilt), and lists onnxruntime-node only as an optional dependency for the
// other platforms: where its script fails npm drops it and the install succeeds.
//
//   node vendor/build.mjs            (re-run after changing the onnxruntime-node version)
import {copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync} from 'node:fs'
import {createRequire} from 'node:module'
import {dirname, join} from 'node:path'

const root = join(import.meta.dirname, '..')
const final = join(root, 'vendor', 'onnxruntime-node')
const PLATFORM = 'linux/x64'
const require = createRequire(join(root, 'package.json'))
const fail = message => {
  console.error(`vendor/build.mjs: ${message}`)
  process.exit(1)
}

let srcPkgPath
try {
  srcPkgPath = require.resolve('onnxruntime-node/package.json')
} catch {
  fail('onnxruntime-node is not installed here (npm ci installs it as an optional dependency)')
}
const src = dirname(srcPkgPath)
const srcPkg = JSON.parse(readFileSync(srcPkgPath, 'utf8'))
const ours = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const common = ours.dependencies?.['onnxruntime-common']
if (common !== srcPkg.version || ours.optionalDependencies?.['onnxruntime-node'] !== srcPkg.version) {
  fail(`package.json must pin onnxruntime-common and the optional onnxruntime-node to the installed onnxruntime-node ${srcPkg.version} (it has ${common} and ${ours.optionalDependencies?.['onnxruntime-node']}): the binding speaks one onnxruntime-common version`)
}
const bin = join(src, 'bin', 'napi-v6', PLATFORM)
for (const f of ['onnxruntime_binding.node', 'libonnxruntime.so.1']) {
  if (!existsSync(join(bin, f))) fail(`${join(bin, f)} is missing: onnxruntime-node ${srcPkg.version} no longer ships it where glmtool expects`)
}

// Built beside and renamed into place, so a glmtool running meanwhile (the test suite packs while
// other tests run) sees the old copy or the new one, never half of one.
const out = `${final}.${process.pid}.tmp`
const old = `${final}.${process.pid}.old`
rmSync(out, {recursive: true, force: true})
mkdirSync(join(out, 'dist'), {recursive: true})
for (const f of readdirSync(join(src, 'dist'))) if (f.endsWith('.js') || f.endsWith('.d.ts')) copyFileSync(join(src, 'dist', f), join(out, 'dist', f))
mkdirSync(join(out, 'bin', 'napi-v6', PLATFORM), {recursive: true})
for (const f of readdirSync(bin)) copyFileSync(join(bin, f), join(out, 'bin', 'napi-v6', PLATFORM, f))
writeFileSync(join(out, 'package.json'), JSON.stringify({
  name: 'onnxruntime-node',
  version: srcPkg.version,
  description: `onnxruntime-node ${srcPkg.version} as published on npm, its linux-x64 CPU binaries only, vendored by glmtool (vendor/build.mjs); no install script`,
  license: srcPkg.license,
  main: srcPkg.main,
  types: srcPkg.types,
  dependencies: {'onnxruntime-common': srcPkg.dependencies['onnxruntime-common']},
}, null, 2) + '\n')
// The npm package carries no licence file; its package.json says MIT, copyright Microsoft.
writeFileSync(join(out, 'LICENSE'), `MIT License

Copyright (c) Microsoft Corporation.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
`)
if (existsSync(final)) renameSync(final, old)
renameSync(out, final)
rmSync(old, {recursive: true, force: true})
console.log(`vendor/build.mjs: onnxruntime-node ${srcPkg.version} (${PLATFORM}) vendored into vendor/onnxruntime-node`)
