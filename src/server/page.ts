import {readFileSync} from 'node:fs'

/**
 * The web chat page with the server's settings filled in. The page lives beside this module
 * (the build copies src/server/web/ into dist/server/web/).
 */
export function chatPage(config: Record<string, unknown>): string {
  const html = readFileSync(new URL('./web/index.html', import.meta.url), 'utf8')
  // JSON inside <script>: "<" escaped so that no value can close the element.
  const json = JSON.stringify(config).replaceAll('<', '\\u003c')
  return html.replace('/*GLMTOOL_CONFIG*/{}/*END*/', json)
}
