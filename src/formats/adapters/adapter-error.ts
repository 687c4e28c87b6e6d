import {GlmtoolError} from '../../errors.js'

/** The ways an adapter can be wrong, each its own code (printed with --json, matched in tests). */
export type AdapterErrorKind =
  | 'not-found' // no adapter at the path, or no weights in it
  | 'missing-config' // adapter_config.json (LoRA) or config.json (P-Tuning) absent
  | 'bad-config' // a config key missing or of the wrong type
  | 'unknown-type' // cannot tell LoRA from P-Tuning
  | 'unsupported' // a real adapter feature merge-adapter does not merge (DoRA, modules_to_save, ...)
  | 'bias' // LoRA bias other than "none"
  | 'generation' // made for the other ChatGLM generation
  | 'target' // a target module the base model does not have
  | 'shape' // factor shapes that do not fit the base weight (hidden size, ...)
  | 'rank' // lora_A / lora_B / r disagree
  | 'non-finite' // NaN or Inf in the adapter
  | 'unloadable' // the published code itself cannot load it (a ChatGLM2-6B P-Tuning checkpoint without trans.*)
  | 'base' // the base model cannot take this adapter (already has a prefix, quantized weight, ...)

/** An adapter that cannot be merged; the message names the file and, where there is one, the tensor. */
export class AdapterError extends GlmtoolError {
  constructor(kind: AdapterErrorKind, message: string) {
    super(`adapter-${kind}`, message)
  }
}
