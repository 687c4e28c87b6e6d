// glmtool's side of chatglm3_tokenizer_check.py: reads {model, texts, chats, decode, responses}
// as JSON on stdin, answers with what glmtool's built code (dist/: `npm run build` first) gives:
// encode ids, build_chat_input ids, decode texts, process_response results. Static imports, so
// that esbuild can bundle it into one file for a machine without node_modules (README.md).
import {readFileSync} from 'node:fs'
import {chatglm3PromptIds, parseChatglm3Response} from '../../dist/runtime/chatglm3-chat.js'
import {tokenizerFromBytes} from '../../dist/runtime/tokenizer/index.js'

const req = JSON.parse(readFileSync(0, 'utf8'))
const tok = tokenizerFromBytes(readFileSync(req.model), 'chatglm3-6b', {source: req.model})
const out = {
  vocab_size: tok.vocabSize,
  encode: (req.texts ?? []).map((t) => tok.encode(t)),
  prompt: (req.texts ?? []).map((t) => tok.encodePrompt(t)),
  chats: (req.chats ?? []).map((c) => chatglm3PromptIds(tok, c.history, c.query, c.role)),
  decode: (req.decode ?? []).map((ids) => tok.decode(ids)),
  responses: (req.responses ?? []).map((r) => parseChatglm3Response(r.output, r.history)),
}
process.stdout.write(JSON.stringify(out))
