import {readFileSync} from 'node:fs'

/** glmtool's version, from package.json (two levels up from both src/ and dist/). */
export const VERSION: string = (() => {
  try {
    return JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version
  } catch {
    return JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version
  }
})()
