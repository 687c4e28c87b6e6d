/**
 * The SentencePiece ModelProto schema as a string, so that the compiled CLI parses model files
 * without locating a .proto file on disk. Verbatim copy of ./sentencepiece_model.proto (the
 * documented source, where the field facts and their provenance are explained);
 * test/sentencepiece-model.test.ts fails when the two differ. Regenerate after editing the .proto.
 */
export const SENTENCEPIECE_MODEL_PROTO = `// The SentencePiece model file schema (*.model files: ChatGLM-6B's ice_text.model, ChatGLM2-6B's
// tokenizer.model), written for glmtool from the facts of google/sentencepiece's
// src/sentencepiece_model.proto (Apache-2.0). Field numbers, types and defaults follow that
// definition exactly: real model files are parsed with this schema, and
// test/sentencepiece-model.test.ts compares every field against the descriptor shipped with
// the Python sentencepiece package when it is installed.
//
// src/runtime/sentencepiece-schema.ts embeds this text verbatim (so the compiled CLI needs no
// file next to it); a test keeps the two identical. Edit both together.

syntax = "proto2";

package sentencepiece;

// How a model was trained. At encode time only a few fields matter: model_type, byte_fallback,
// treat_whitespace_as_suffix, unk_surface and the *_piece names; the rest is provenance.
message TrainerSpec {
  // Corpus files and their format ("text" or "tsv").
  repeated string input = 1;
  optional string input_format = 7;

  // Output prefix: <model_prefix>.model and <model_prefix>.vocab.
  optional string model_prefix = 2;

  enum ModelType {
    UNIGRAM = 1;  // unigram language model
    BPE = 2;      // byte pair encoding (both ChatGLM generations)
    WORD = 3;     // whitespace-delimited words
    CHAR = 4;     // single characters
  }
  optional ModelType model_type = 3 [default = UNIGRAM];

  optional int32 vocab_size = 4 [default = 8000];
  repeated string accept_language = 5;
  optional int32 self_test_sample_size = 6 [default = 0];

  // Differentially private training.
  optional bool enable_differential_privacy = 50 [default = false];
  optional float differential_privacy_noise_level = 51 [default = 0.0];
  optional uint64 differential_privacy_clipping_threshold = 52 [default = 0];

  // Training parameters.
  optional float character_coverage = 10 [default = 0.9995];
  optional uint64 input_sentence_size = 11 [default = 0];
  optional bool shuffle_input_sentence = 19 [default = true];
  optional int32 mining_sentence_size = 12 [deprecated = true];
  optional int32 training_sentence_size = 13 [deprecated = true];
  optional int32 seed_sentencepiece_size = 14 [default = 1000000];
  optional float shrinking_factor = 15 [default = 0.75];
  optional int32 max_sentence_length = 18 [default = 4192];
  optional int32 num_threads = 16 [default = 16];
  optional int32 num_sub_iterations = 17 [default = 2];

  // Shape of the pieces.
  optional int32 max_sentencepiece_length = 20 [default = 16];
  optional bool split_by_unicode_script = 21 [default = true];
  optional bool split_by_number = 23 [default = true];
  optional bool split_by_whitespace = 22 [default = true];
  // Put the whitespace marker at the end of a piece ("word▁") instead of the start ("▁word").
  optional bool treat_whitespace_as_suffix = 24 [default = false];
  optional bool allow_whitespace_only_pieces = 26 [default = false];
  optional bool split_digits = 25 [default = false];
  optional string pretokenization_delimiter = 53 [default = ""];

  // Vocabulary management.
  repeated string control_symbols = 30;
  repeated string user_defined_symbols = 31;
  optional string required_chars = 36;
  // Characters outside the vocabulary become <0xXX> byte pieces instead of <unk>.
  optional bool byte_fallback = 35 [default = false];
  optional bool vocabulary_output_piece_score = 32 [default = true];
  optional bool hard_vocab_limit = 33 [default = true];
  optional bool use_all_vocab = 34 [default = false];

  // Reserved ids and their surface forms; -1 means "not in the vocabulary".
  optional int32 unk_id = 40 [default = 0];
  optional int32 bos_id = 41 [default = 1];
  optional int32 eos_id = 42 [default = 2];
  optional int32 pad_id = 43 [default = -1];
  optional string unk_piece = 45 [default = "<unk>"];
  optional string bos_piece = 46 [default = "<s>"];
  optional string eos_piece = 47 [default = "</s>"];
  optional string pad_piece = 48 [default = "<pad>"];
  // What <unk> decodes to: U+2047 DOUBLE QUESTION MARK between two spaces.
  optional string unk_surface = 44 [default = " ⁇ "];

  optional bool train_extremely_large_corpus = 49 [default = false];
  optional string seed_sentencepieces_file = 54 [default = ""];

  extensions 200 to max;
}

// Text normalization applied before segmentation (and, as denormalizer_spec, after decoding).
message NormalizerSpec {
  // Rule name ("nmt_nfkc", "identity", ...); informational once the map is compiled.
  optional string name = 1;
  // The compiled rules: a uint32 trie size, a Darts-clone double array mapping UTF-8 input to
  // offsets, then the NUL-terminated replacement strings. Empty means no character mapping.
  optional bytes precompiled_charsmap = 2;
  // Prepend a space so that "world" and " world" segment alike.
  optional bool add_dummy_prefix = 3 [default = true];
  // Drop leading and trailing whitespace and collapse runs of it.
  optional bool remove_extra_whitespaces = 4 [default = true];
  // Replace " " with U+2581 (▁).
  optional bool escape_whitespaces = 5 [default = true];
  // Source of custom rules (TSV); training-time only.
  optional string normalization_rule_tsv = 6;

  extensions 200 to max;
}

// Sample inputs with their expected segmentation, for self-tests.
message SelfTestData {
  message Sample {
    optional string input = 1;
    optional string expected = 2;
  }
  repeated Sample samples = 1;

  extensions 200 to max;
}

message ModelProto {
  message SentencePiece {
    enum Type {
      NORMAL = 1;        // ordinary piece, used by segmentation
      UNKNOWN = 2;       // <unk>; exactly one per model
      CONTROL = 3;       // <s>, </s>, ...: never produced from text
      USER_DEFINED = 4;  // always matched as one piece where it occurs in text
      UNUSED = 5;        // kept in the vocabulary but never produced
      BYTE = 6;          // <0x00>..<0xFF>, for byte fallback
    }
    optional string piece = 1;  // never empty
    optional float score = 2;
    optional Type type = 3 [default = NORMAL];

    extensions 200 to max;
  }

  // The vocabulary, in id order.
  repeated SentencePiece pieces = 1;
  optional TrainerSpec trainer_spec = 2;
  optional NormalizerSpec normalizer_spec = 3;
  optional SelfTestData self_test_data = 4;
  optional NormalizerSpec denormalizer_spec = 5;

  extensions 200 to max;
}
`
