import {readFile} from 'node:fs/promises'
import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../cli/base-command.js'
import {MODEL_ID_HELP} from '../cli/model-arg.js'
import {UsageError} from '../errors.js'
import type {TokenizerArch} from '../runtime/tokenizer/index.js'
import {decodeIds, encodeTexts, openTokenizer, parseIds, TOKENIZER_ARCHS} from '../runtime/tokenizer/tokenize.js'

export default class Tokenize extends BaseCommand {
  static override summary = 'Encode text to token ids and pieces, or decode ids to text, with a model\'s tokenizer'
  static override description = 'Uses the published tokenizer of each generation (SentencePiece, plus ChatGLM-6B\'s <n> / <|tab|> / <|blank_k|> preprocessing and num_image_tokens offset, or ChatGLM2-6B\'s appended specials), id for id with the published Python code. MODEL may be a model directory (its config.json is checked against the tokenizer) or the tokenizer file itself (ice_text.model, tokenizer.model). ChatGLM3-6B ships ChatGLM2-6B\'s tokenizer.model with four role specials (<|system|> <|user|> <|assistant|> <|observation|>) after the five: a bare tokenizer.model is read as ChatGLM2-6B\'s unless --arch chatglm3-6b says otherwise. Like llama-tokenize.'
  static override examples = [
    '<%= config.bin %> tokenize ./chatglm2-6b --text "你好，ChatGLM"',
    '<%= config.bin %> tokenize ./chatglm-6b/ice_text.model --text "def f():\\n\\treturn 1" --json',
    '<%= config.bin %> tokenize ./chatglm-6b --file prompt.txt',
    '<%= config.bin %> tokenize ./chatglm-6b --decode 5,74874,130001',
    '<%= config.bin %> tokenize ./chatglm3-6b/tokenizer.model --arch chatglm3-6b --decode 64790,64792,64795,30910,13',
  ]

  static override args = {
    model: Args.string({required: true, description: `model directory, or a tokenizer file (ice_text.model / tokenizer.model); ${MODEL_ID_HELP}`}),
  }

  static override flags = {
    text: Flags.string({multiple: true, description: 'text to encode (repeatable)'}),
    file: Flags.string({multiple: true, description: 'encode this file\'s whole text (repeatable)'}),
    decode: Flags.string({multiple: true, description: 'ids to decode, as 1,2,3 (repeatable)'}),
    arch: Flags.string({
      options: [...TOKENIZER_ARCHS],
      description: 'whose tokenizer to read the file as (default: what the model directory\'s config.json or the file name says; a bare tokenizer.model is chatglm2-6b\'s, and chatglm3-6b\'s shares its bytes)',
    }),
  }

  async run() {
    const {args, flags} = await this.parse(Tokenize)
    if (!flags.text?.length && !flags.file?.length && !flags.decode?.length) {
      throw new UsageError('nothing to do: give --text, --file or --decode')
    }
    const decodes = (flags.decode ?? []).map(parseIds)
    const texts = [...(flags.text ?? [])]
    for (const f of flags.file ?? []) texts.push(await readFile(f, 'utf8'))
    const {loaded, arch, report, note} = await openTokenizer(this.resolveModel(args.model).path, flags.arch as TokenizerArch | undefined)
    const tok = loaded.tokenizer
    const encoded = encodeTexts(tok, texts)
    const decoded = decodes.map(ids => decodeIds(tok, ids, loaded.path))
    if (this.jsonEnabled()) return [...encoded, ...decoded]
    if (note) this.note(note)
    this.log(`${loaded.path}: ${arch}, ${report.type}, ${report.pieces} pieces${report.numImageTokens ? ` + ${report.numImageTokens} image tokens` : ''}, vocabulary ${report.vocabSize}`)
    for (const e of encoded) {
      this.log(`\n${JSON.stringify(e.text.length > 200 ? `${e.text.slice(0, 200)}...` : e.text)}: ${e.ids.length} tokens`)
      e.ids.forEach((id, i) => this.log(`${String(id).padStart(7)} -> ${JSON.stringify(e.pieces[i])}`))
    }
    for (const d of decoded) this.log(`\n[${d.ids.join(', ')}] -> ${JSON.stringify(d.text)}`)
    return [...encoded, ...decoded]
  }
}
