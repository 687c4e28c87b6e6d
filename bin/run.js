#!/usr/bin/env node
import {existsSync} from 'node:fs'
import {execute} from '@oclif/core'

// The npm package ships dist/; a checkout builds it with `npm run build` (npm test does too).
if (!existsSync(new URL('../dist/commands/', import.meta.url))) {
  console.error(`glmtool is not built: run \`npm run build\` in ${new URL('..', import.meta.url).pathname.replace(/\/$/, '')} first`)
  process.exit(1)
}
await execute({dir: import.meta.url})
