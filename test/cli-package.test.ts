/**
 * The npm package (issue 11, items 10 and 12): what `npm pack` puts in it, checked with npm
 * itself (`npm pack`, then `tar` lists and unpacks the tarball); the prebuilt CUDA addon is in it
 * where nvcc exists and is what the *unpacked* package's loader finds (a real ELF addon that
 * dlopens: its verdict is about the GPU, never "not built" or "cannot be loaded"); without nvcc
 * the package ships none and the loader says how to build from source. The licence is the
 * standard Apache-2.0 text (compared with Debian's copy where it is installed), and the lockfile
 * that npm wrote holds one protobufjs and no install script but onnxruntime-node's, which the
 * project's allowScripts policy denies (npm 11), replacing the old .npmrc key npm warns about.
 */
import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {ROOT} from './helpers/cli.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-package-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
const nvcc = spawnSync('sh', ['-c', 'command -v nvcc || ls /usr/local/cuda/bin/nvcc'], {encoding: 'utf8'}).status === 0
const DEBIAN_APACHE = '/usr/share/common-licenses/Apache-2.0'
const PREBUILT = 'prebuilds/linux-x64/glmtool_cuda.node'

/**
 * prepack's steps after its build (npm test has built dist/, and rebuilding it here would race
 * the CLI tests running meanwhile), then `npm pack` without re-running them; the tarball's files.
 */
function pack(env: Record<string, string> = {}): {tarball: string, files: string[]} {
  const prepack = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts.prepack as string
  expect(prepack).toBe('npm run build && node native/build.mjs --prebuild && node vendor/build.mjs')
  for (const step of [['native/build.mjs', '--prebuild'], ['vendor/build.mjs']]) {
    const r = spawnSync(process.execPath, step, {cwd: ROOT, encoding: 'utf8', env: {...process.env, ...env}})
    if (r.status !== 0) throw new Error(`prepack step ${step.join(' ')} failed: ${r.stderr}${r.stdout}`)
  }
  const dest = mkdtempSync(join(work, 'pack-'))
  const name = execFileSync(npm, ['pack', '--ignore-scripts', '--silent', '--pack-destination', dest], {cwd: ROOT, encoding: 'utf8'}).trim().split('\n').pop()!
  const tarball = join(dest, name)
  const files = execFileSync('tar', ['tzf', tarball], {encoding: 'utf8'}).trim().split('\n').map(f => f.replace(/^package\//, ''))
  return {tarball, files}
}

/** Unpack the tarball and ask its own loader where the addon is and whether it loads. */
function unpackedLoader(tarball: string): {path: string, reason: string | null} {
  const dir = mkdtempSync(join(work, 'unpacked-'))
  execFileSync('tar', ['xzf', tarball, '-C', dir])
  const loader = join(dir, 'package', 'dist', 'runtime', 'backends', 'cuda-addon.js')
  const script = `const m = await import(${JSON.stringify(loader)}); console.log(JSON.stringify({path: m.cudaAddonPath(), reason: m.cudaUnavailableReason() ?? null}))`
  const env = {...process.env}
  delete env.GLMTOOL_CUDA_ADDON
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {cwd: dir, encoding: 'utf8', env})
  const r = JSON.parse(out) as {path: string, reason: string | null}
  return {path: r.path.slice(join(dir, 'package').length + 1), reason: r.reason}
}

describe('npm pack', () => {
  it('without nvcc: ships the addon sources and build script but no prebuilt addon; the loader says how to build from source', () => {
    const {tarball, files} = pack({NVCC: join(work, 'no-nvcc')})
    for (const f of ['LICENSE', 'README.md', 'bin/run.js', 'dist/formats/onnx/onnx.proto', 'dist/runtime/tokenizer/sentencepiece_model.proto',
      'native/build.mjs', 'native/engine.cu', 'native/addon.cpp', 'native/cublas_dl.cpp']) expect(files, f).toContain(f)
    expect(files).not.toContain(PREBUILT)
    const r = unpackedLoader(tarball)
    expect(r.reason).toMatch(/^glmtool's CUDA engine is not built \(no prebuilt addon for linux-x64 .* and none built from source .*\); build it from source with `node .*native\/build\.mjs` \(needs the CUDA toolkit's nvcc/)
  }, 120_000)

  it.skipIf(!nvcc || process.platform !== 'linux' || process.arch !== 'x64')('with nvcc: the tarball holds the prebuilt linux-x64 addon, and the unpacked package loads it', ctx => {
    if (!nvcc) console.warn('npm pack prebuilt addon: nvcc is not installed; skipped')
    const {tarball, files} = pack()
    expect(files).toContain(PREBUILT)
    const r = unpackedLoader(tarball)
    expect(r.path).toBe(PREBUILT)
    // It dlopens and speaks this glmtool's interface: whatever it says is about the machine.
    if (r.reason) expect(r.reason).not.toMatch(/not built|cannot be loaded|another glmtool version|numbers its weight kinds/)
    ctx.annotate?.(`prebuilt addon verdict here: ${r.reason ?? 'usable'}`)
  }, 300_000)
})

describe('npm install -g of the packed package', () => {
  // The case of issue 11 item 10: a machine that reaches the npm registry but not nuget.org.
  // onnxruntime-node's postinstall (an optional dependency now) is pointed at a closed loopback
  // port through global-agent, its documented proxy switch, so its download fails here whatever
  // this machine reaches; npm itself installs from its cache (npm ci filled it).
  it.skipIf(process.platform !== 'linux' || process.arch !== 'x64')('succeeds with no warning, and the installed glmtool runs a model on the CPU with the vendored onnxruntime', () => {
    const {tarball, files} = pack({NVCC: join(work, 'no-nvcc')})
    for (const f of ['vendor/onnxruntime-node/package.json', 'vendor/onnxruntime-node/LICENSE', 'vendor/onnxruntime-node/dist/index.js',
      'vendor/onnxruntime-node/bin/napi-v6/linux/x64/onnxruntime_binding.node', 'vendor/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime.so.1']) expect(files, f).toContain(f)
    expect(JSON.parse(execFileSync('tar', ['xzOf', tarball, 'package/package.json'], {encoding: 'utf8'})).scripts).not.toHaveProperty('prepare')
    // Beside an installed onnxruntime-node (this checkout) the vendored copy, now present, is not
    // loaded: two copies in one process would both register onnxruntime-common's "cpu" backend.
    const here = execFileSync(process.execPath, ['--input-type=module', '-e',
      `const m = await import(${JSON.stringify(join(ROOT, 'dist', 'runtime', 'backends', 'ort.js'))}); m.ort(); console.log(m.ortSource())`], {encoding: 'utf8'}).trim()
    expect(here).toContain(join(ROOT, 'node_modules', 'onnxruntime-node'))
    const prefix = mkdtempSync(join(work, 'global-'))
    const env: Record<string, string | undefined> = {...process.env, GLOBAL_AGENT_HTTPS_PROXY: 'http://127.0.0.1:9', GLOBAL_AGENT_HTTP_PROXY: 'http://127.0.0.1:9'}
    delete env.ONNXRUNTIME_NODE_INSTALL
    delete env.npm_config_onnxruntime_node_install
    const r = spawnSync(npm, ['install', '-g', tarball, '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund'], {encoding: 'utf8', env, timeout: 240_000})
    expect(r.status, r.stderr).toBe(0)
    // One warning is upstream's and harmless: fastify 5 takes light-my-request ^6, whose 6.8 wants
    // cookie 2, which declares Node >= 22; fastify loads it only for inject(), which glmtool never
    // calls (a checkout overrides it to cookie 1, package.json "overrides"; a package cannot).
    const warnings = r.stderr.replace(/(npm warn EBADENGINE Unsupported engine \{\n(npm warn EBADENGINE {3}.*\n)*npm warn EBADENGINE \}\n)/g,
      block => /package: 'cookie@2\./.test(block) ? '' : block)
    expect(warnings).not.toMatch(/warn|ERR/i)
    const pkg = join(prefix, 'lib', 'node_modules', 'glmtool')
    // Its download failed, so npm dropped the optional onnxruntime-node: only the vendored copy is left.
    expect(existsSync(join(pkg, 'node_modules', 'onnxruntime-node'))).toBe(false)
    const bin = join(prefix, 'bin', 'glmtool')
    const run = (...args: string[]) => {
      const x = spawnSync(bin, args, {encoding: 'utf8', cwd: prefix, timeout: 120_000, env: {...process.env, GLMTOOL_CACHE: join(prefix, 'cache')}})
      if (x.status !== 0) throw new Error(`glmtool ${args.join(' ')}: ${x.stderr}`)
      return x.stdout
    }
    const model = join(prefix, 'tiny')
    run('synth', '--arch', 'chatglm2-6b', '--size', 'tiny', '--out', model)
    const out = JSON.parse(run('chat', model, '--backend', 'cpu', '--prompt', 'hi', '--max-new-tokens', '3', '--json')) as {backend: string, turns: {generatedIds: number[], stoppedBy: string}[]}
    expect(out.backend).toBe('onnx-cpu')
    const turn = out.turns[0]
    expect(turn.generatedIds.length).toBeGreaterThan(0)
    expect(turn.generatedIds.length).toBeLessThanOrEqual(3)
    expect(['max-new-tokens', 'eos']).toContain(turn.stoppedBy)
    const loader = join(pkg, 'dist', 'runtime', 'backends', 'ort.js')
    const where = execFileSync(process.execPath, ['--input-type=module', '-e',
      `const m = await import(${JSON.stringify(loader)}); m.ort(); console.log(m.ortSource())`], {encoding: 'utf8'}).trim()
    expect(where).toBe(join(pkg, 'vendor', 'onnxruntime-node'))
  }, 400_000)
})

describe('package metadata', () => {
  it.skipIf(!existsSync(DEBIAN_APACHE))('LICENSE is the standard Apache-2.0 text, as package.json says', () => {
    if (!existsSync(DEBIAN_APACHE)) console.warn(`LICENSE: ${DEBIAN_APACHE} is absent; skipped`)
    expect(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).license).toBe('Apache-2.0')
    expect(readFileSync(join(ROOT, 'LICENSE'), 'utf8')).toBe(readFileSync(DEBIAN_APACHE, 'utf8'))
  })

  it('the lockfile has one protobufjs (8), no onnx-proto, and onnxruntime-node is the only production install script: optional, denied by allowScripts, pinned with onnxruntime-common', () => {
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as {packages: Record<string, {version?: string, dev?: boolean, hasInstallScript?: boolean}>}
    const entries = Object.entries(lock.packages).filter(([k]) => k)
    const named = (name: string) => entries.filter(([k]) => k.endsWith(`node_modules/${name}`))
    expect(named('protobufjs').map(([, v]) => v.version?.split('.')[0])).toEqual(['8'])
    expect(named('onnx-proto')).toEqual([])
    const prodScripts = entries.filter(([, v]) => v.hasInstallScript && !v.dev).map(([k]) => k)
    expect(prodScripts).toEqual(['node_modules/onnxruntime-node'])
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
    expect(pkg.allowScripts['onnxruntime-node']).toBe(false)
    expect(pkg.dependencies).not.toHaveProperty('onnxruntime-node')
    expect(pkg.optionalDependencies['onnxruntime-node']).toBe(pkg.dependencies['onnxruntime-common'])
    expect(lock.packages['node_modules/onnxruntime-node']).toMatchObject({optional: true, version: pkg.dependencies['onnxruntime-common']})
    expect(pkg.scripts).not.toHaveProperty('prepare')
    expect(existsSync(join(ROOT, '.npmrc'))).toBe(false)
  })
})
