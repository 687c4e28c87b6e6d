/**
 * Interop with the reference `safetensors` Python package (docs/formats.md: files each side writes
 * must load in the other). The Python half is test/crosscheck/safetensors_interop.py.
 *
 * (a) Files the Python package wrote, committed under test/fixtures/safetensors-py/ (made on the
 *     GPU machine with `python3 test/crosscheck/safetensors_interop.py write DIR`), or any such
 *     directory named by SAFETENSORS_PY_DIR, are read with glmtool's reader and compared to
 *     their manifest.json.
 * (b) glmtool writes its own files + manifest.json into a temp dir, or into SAFETENSORS_INTEROP_OUT
 *     when set, which is then kept for the Python side:
 *       SAFETENSORS_INTEROP_OUT=/tmp/st-glm npx vitest run test/safetensors-interop
 *       python3 test/crosscheck/safetensors_interop.py check /tmp/st-glm
 */
import {existsSync} from 'node:fs'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {describe, expect, it} from 'vitest'
import {checkAgainstManifest, writeGlmtoolInteropFiles, type Manifest} from './helpers/safetensors-interop.js'

const pyDir = process.env.SAFETENSORS_PY_DIR ?? fileURLToPath(new URL('fixtures/safetensors-py', import.meta.url))
const havePy = existsSync(join(pyDir, 'manifest.json'))
if (!havePy) console.log(`safetensors interop: skipping Python-written fixtures, ${pyDir}/manifest.json is absent (see test/crosscheck/safetensors_interop.py)`)

describe('safetensors interop with the Python package', () => {
  it.skipIf(!havePy)('reads files written by safetensors.torch.save_file as their manifest says', async () => {
    const manifest = JSON.parse(await readFile(join(pyDir, 'manifest.json'), 'utf8')) as Manifest
    expect(Object.keys(manifest.files).length).toBeGreaterThan(0)
    const problems = await checkAgainstManifest(pyDir)
    expect(problems).toEqual([])
  })

  it('writes files whose manifest glmtool itself reproduces (input for the Python check)', async () => {
    const out = process.env.SAFETENSORS_INTEROP_OUT
    const dir = out ?? await mkdtemp(join(tmpdir(), 'glmtool-st-interop-'))
    try {
      const manifest = await writeGlmtoolInteropFiles(dir)
      // Guard against a vacuous pass: the manifest covers all dtypes and several shards.
      const files = Object.keys(manifest.files)
      expect(files.filter(f => f.startsWith('glmtool_sharded/')).length).toBeGreaterThan(1)
      expect(Object.keys(manifest.files['glmtool_all_dtypes.safetensors'].tensors)).toHaveLength(31)
      expect(await checkAgainstManifest(dir)).toEqual([])
    } finally {
      if (out === undefined) await rm(dir, {recursive: true, force: true})
    }
  })
})
