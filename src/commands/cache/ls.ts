import Table from 'cli-table3'
import {BaseCommand} from '../../cli/base-command.js'
import {formatBytes} from '../../cli/progress.js'
import {cacheRoot, listCache} from '../../pipelines/model-cache.js'

export default class CacheLs extends BaseCommand {
  static override summary = 'List the converted models glmtool keeps in its cache'
  static override description = 'chat and bench --backend cpu convert a torch or safetensors model to ONNX once and keep it in the cache ($GLMTOOL_CACHE, else $XDG_CACHE_HOME/glmtool, else ~/.cache/glmtool). Each entry shows its size, the model it came from and its state: current (used while the model is unchanged), stale (the model changed, or another glmtool made it: never used again), orphaned (the model is gone), unknown (made before entries were recorded).'
  static override examples = ['<%= config.bin %> cache ls', '<%= config.bin %> cache ls --json']

  async run() {
    await this.parse(CacheLs)
    const root = cacheRoot()
    const entries = listCache(root)
    const bytes = entries.reduce((a, e) => a + e.bytes, 0)
    if (!this.jsonEnabled()) {
      if (!entries.length) this.log(`${root}: no cached conversions`)
      else {
        const t = new Table({head: ['key', 'size', 'state', 'arch', 'last used', 'source']})
        for (const e of entries) t.push([e.key, formatBytes(e.bytes), e.state, e.arch ?? '?', e.lastUsed.slice(0, 16).replace('T', ' '), e.source ?? '?'])
        this.log(t.toString())
        this.log(`${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}, ${formatBytes(bytes)} in ${root}`)
      }
    }
    return {root, bytes, entries}
  }
}
