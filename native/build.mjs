#!/usr/bin/env node
// `npm run build:native`: builds glmtool's CUDA engine, build/native/glmtool_cuda.node, with nvcc.
// Optional: without nvcc, Node's headers or node-addon-api it says what is missing and exits 0,
// and glmtool's CUDA backend then reports itself unavailable (src/runtime/backends/cuda-addon.ts).
//
//   node native/build.mjs [--debug] [--verbose]     (NVCC=/path/to/nvcc to pick a compiler)
//   node native/build.mjs --prebuild                 (npm pack's prepack step)
//
// --prebuild also copies the addon into prebuilds/<platform>-<arch>/glmtool_cuda.node, which the
// npm package ships and the loader tries first; it reuses build/native/glmtool_cuda.node when that
// is newer than every file in native/ (and the toolchain is here), and removes a stale prebuilt
// addon first, so a package packed without nvcc ships none (the loader then says how to build it from source).
// This script and the sources are in the package, so an npm user can build from source too.
//
// Targets sm_80, sm_86, sm_89, sm_90 machine code plus compute_90 PTX (newer GPUs JIT it);
// cudart is linked statically; cuBLAS is opened at run time (native/cublas_dl.cpp), so the build
// needs no cuBLAS headers or libraries.
import {execFileSync, spawn} from 'node:child_process'
import {copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync} from 'node:fs'
import {createRequire} from 'node:module'
import {homedir} from 'node:os'
import {dirname, join} from 'node:path'

const root = join(import.meta.dirname, '..')
const src = join(root, 'native')
const out = join(root, 'build', 'native')
const debug = process.argv.includes('--debug')
const verbose = process.argv.includes('--verbose')
const prebuild = process.argv.includes('--prebuild')
const platform = `${process.platform}-${process.arch}`
const prebuiltDir = join(root, 'prebuilds', platform)
const built = join(out, 'glmtool_cuda.node')

if (prebuild) {
  rmSync(join(prebuiltDir, 'glmtool_cuda.node'), {force: true})
  if (platform !== 'linux-x64') skip(`prebuilt addons are made for linux-x64 only, this is ${platform}`)
}

function shipPrebuilt(how) {
  mkdirSync(prebuiltDir, {recursive: true})
  // Copied then renamed, so a loader never sees half a file.
  copyFileSync(built, join(prebuiltDir, 'glmtool_cuda.node.tmp'))
  renameSync(join(prebuiltDir, 'glmtool_cuda.node.tmp'), join(prebuiltDir, 'glmtool_cuda.node'))
  console.log(`build:native: ${how}; prebuilt addon at ${join('prebuilds', platform, 'glmtool_cuda.node')}`)
}

function skip(why) {
  if (prebuild) console.log(`build:native: the package will ship no prebuilt CUDA addon for ${platform}.`)
  console.log(`build:native: skipped: ${why}. glmtool works without it; --backend cuda will say it is unavailable.`)
  process.exit(0)
}

function which(cmd) {
  try {
    return execFileSync('sh', ['-c', `command -v ${cmd}`], {encoding: 'utf8'}).trim() || undefined
  } catch {
    return undefined
  }
}

const nvcc = process.env.NVCC || which('nvcc') || ['/usr/local/cuda/bin/nvcc'].find(p => existsSync(p))
if (!nvcc) skip('nvcc (the CUDA toolkit compiler) was not found on PATH or in /usr/local/cuda/bin; set NVCC to use another')
if (!existsSync(nvcc)) skip(`NVCC is set to ${nvcc}, which does not exist`)
// nvcc may be a wrapper script: ask it where its toolkit is (the TOP of its dry run).
let cudaHome = process.env.CUDA_HOME
if (!cudaHome) {
  try {
    const dry = execFileSync(nvcc, ['--dryrun', '-c', '-x', 'cu', '/dev/null', '-o', '/dev/null'], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']})
    cudaHome = /^#\$ TOP=(.*)$/m.exec(dry)?.[1]
  } catch (error) {
    cudaHome = /^#\$ TOP=(.*)$/m.exec(String(error.stderr ?? ''))?.[1]
  }
}
cudaHome ??= '/usr/local/cuda'
const cudaInclude = [join(cudaHome, 'include'), join(cudaHome, 'targets/x86_64-linux/include')].find(d => existsSync(join(d, 'cuda_runtime.h')))
if (!cudaInclude) skip(`cuda_runtime.h was not found under ${cudaHome}`)

const nodeInclude = [
  process.env.NODE_INCLUDE,
  join(dirname(dirname(process.execPath)), 'include', 'node'),
  '/usr/include/node',
  '/usr/local/include/node',
  join(homedir(), '.cache', 'node-gyp', process.versions.node, 'include', 'node'),
].find(d => d && existsSync(join(d, 'node_api.h')))
if (!nodeInclude) skip(`Node's headers (node_api.h) were not found; set NODE_INCLUDE or run \`npx node-gyp install\``)

let addonApi
try {
  addonApi = createRequire(import.meta.url)('node-addon-api').include_dir
} catch {
  skip('node-addon-api is not installed (it is a devDependency: run `npm ci`)')
}
addonApi = addonApi.replace(/^"|"$/g, '')

// Reuse an up-to-date build only once the toolchain is known to be here, so a package packed
// without nvcc ships no prebuilt addon whatever build/native holds.
if (prebuild && !debug && existsSync(built) && statSync(built).mtimeMs > Math.max(...readdirSync(src).map(f => statSync(join(src, f)).mtimeMs))) {
  shipPrebuilt('reused the up-to-date build/native/glmtool_cuda.node')
  process.exit(0)
}

const gencode = ['80', '86', '89', '90'].flatMap(a => ['-gencode', `arch=compute_${a},code=sm_${a}`]).concat(['-gencode', 'arch=compute_90,code=compute_90'])
const opt = debug ? ['-g', '-O0'] : ['-O3']

function run(cmd, args) {
  return new Promise((resolve, reject) => {
    if (verbose) console.log([cmd, ...args].join(' '))
    const p = spawn(cmd, args, {stdio: 'inherit'})
    p.on('error', reject)
    p.on('exit', code => (code === 0 ? resolve() : reject(new Error(`${cmd} exited with ${code}`))))
  })
}

mkdirSync(out, {recursive: true})
const started = Date.now()
const cxx = process.env.CXX || 'g++'
const cxxFlags = ['-std=c++17', '-fPIC', '-fvisibility=hidden', '-Wall', ...opt, `-I${cudaInclude}`]
try {
  await Promise.all([
    run(nvcc, ['-std=c++17', ...opt, ...gencode, '--threads', '0', '-Xcompiler', '-fPIC,-fvisibility=hidden', ...(verbose ? ['-Xptxas', '-v'] : []),
      '-c', join(src, 'engine.cu'), '-o', join(out, 'engine.o')]),
    run(cxx, [...cxxFlags, `-I${nodeInclude}`, `-I${addonApi}`, '-DNAPI_VERSION=8', '-DNAPI_CPP_EXCEPTIONS', '-fexceptions',
      '-c', join(src, 'addon.cpp'), '-o', join(out, 'addon.o')]),
    run(cxx, [...cxxFlags, '-c', join(src, 'cublas_dl.cpp'), '-o', join(out, 'cublas_dl.o')]),
  ])
  const tmp = join(out, 'glmtool_cuda.node.tmp')
  await run(nvcc, ['-shared', '-cudart', 'static', ...gencode, '-o', tmp, join(out, 'engine.o'), join(out, 'addon.o'), join(out, 'cublas_dl.o'),
    '-Xlinker', '--exclude-libs,ALL', '-ldl', '-lpthread', '-lrt'])
  renameSync(tmp, built)
} catch (error) {
  console.error(`build:native: failed: ${error.message}`)
  process.exit(1)
}
const size = statSync(join(out, 'glmtool_cuda.node')).size
console.log(`build:native: built ${join('build', 'native', 'glmtool_cuda.node')} (${(size / 1e6).toFixed(1)} MB, sm_80/86/89/90 + compute_90 PTX, cudart static) with ${nvcc} in ${((Date.now() - started) / 1000).toFixed(0)} s`)
if (prebuild) shipPrebuilt('built it')
