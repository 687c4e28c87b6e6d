/**
 * Where glmtool's onnxruntime comes from: the onnxruntime-node package where npm installed it (a
 * checkout; other platforms; linux-x64 where its CUDA download succeeded), else the copy the npm
 * package vendors for linux-x64 (vendor/build.mjs says why). In that order because two copies
 * must never load in one process: both would register onnxruntime-common's "cpu" backend, and
 * the second fails. Loaded on first use, so commands that never run a graph work even where
 * neither is installed.
 */
import {existsSync} from 'node:fs'
import {createRequire} from 'node:module'
import {fileURLToPath} from 'node:url'
import type * as Ort from 'onnxruntime-node'
import {GlmtoolError} from '../../errors.js'

export type {Ort}

/** The package root: three levels above dist/runtime/backends (and src/runtime/backends). */
const VENDORED = fileURLToPath(new URL('../../../vendor/onnxruntime-node/', import.meta.url))
const require = createRequire(import.meta.url)
let loaded: {ort: typeof Ort, from: string} | undefined

function vendoredHere(): boolean {
  return existsSync(`${VENDORED}bin/napi-v6/${process.platform}/${process.arch}/onnxruntime_binding.node`)
}

/** onnxruntime-node's API; a one-line error saying how to install it where neither copy is present. */
export function ort(): typeof Ort {
  if (!loaded) {
    let from: string | undefined
    try {
      from = require.resolve('onnxruntime-node')
    } catch (error) {
      if (!vendoredHere()) {
        throw new GlmtoolError('no-onnxruntime', `onnxruntime-node is not installed (glmtool's package carries it for linux-x64 only; on ${process.platform}-${process.arch} npm installs it as an optional dependency, and that install failed: ${(error as Error).message.split('\n')[0]}); reinstall with \`ONNXRUNTIME_NODE_INSTALL=skip npm install -g glmtool\``)
      }
    }
    loaded = from ? {ort: require(from) as typeof Ort, from} : {ort: require(VENDORED) as typeof Ort, from: VENDORED.replace(/\/$/, '')}
  }
  return loaded.ort
}

/** Which copy ort() loaded (a directory or a file), for bench and the package test; undefined before first use. */
export function ortSource(): string | undefined {
  return loaded?.from
}
