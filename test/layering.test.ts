/**
 * The layering docs/architecture.md states, as the imports show it: src/quant is pure math
 * (no Node module, no I/O, nothing from the layers above it: quantize's steps that read files,
 * run threads or onnxruntime are in src/pipelines/quantize/).
 */
import {readdirSync, readFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'
import {ROOT} from './helpers/cli.js'

const QUANT = join(ROOT, 'src', 'quant')
const ABOVE = /^\.\.\/(pipelines|runtime|server|commands|cli|synth)\//

function imports(text: string): string[] {
  return [...text.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'|import\('([^']+)'\)/gm)].map(m => m[1] ?? m[2])
}

describe('src/quant is pure math', () => {
  const files = readdirSync(QUANT).filter(f => f.endsWith('.ts'))
  it('has its files', () => {
    expect(files).toEqual(expect.arrayContaining(['rtn.ts', 'pack.ts', 'calibrate.ts', 'dequant.ts']))
  })

  it('the import scan sees imports', () => {
    expect(imports("import {a} from 'node:fs'\nexport {b} from '../pipelines/x.js'\nconst m = await import('./y.js')")).toEqual(['node:fs', '../pipelines/x.js', './y.js'])
  })

  it.each(files)('%s imports no Node module and nothing from the layers above', f => {
    const found = imports(readFileSync(join(QUANT, f), 'utf8'))
    expect(found.filter(s => s.startsWith('node:') || ABOVE.test(s) || !s.startsWith('.'))).toEqual([])
  })
})
