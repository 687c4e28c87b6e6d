"""PreTrainedTokenizer, reduced to the paths the published ChatGLM3-6B tokenization_chatglm.py
takes under transformers 4.30 (the version THUDM/ChatGLM3 pinned at release), for
test/crosscheck/chatglm3_tokenizer_check.py. THE STAND-IN'S OWN BEHAVIOUR (what is not the
published code), each as transformers 4.30 does it for this tokenizer, which registers no added
or special tokens (its tokenizer_config.json names none; unk/pad/eos are properties of the
published class):

- encode(text, add_special_tokens): tokenize() finds no added token to split on, so it is the
  published _tokenize(text) (nothing for ""), then the published _convert_token_to_id for each
  token, then, with add_special_tokens, the published build_inputs_with_special_tokens.
- batch_encode_plus(batch, is_split_into_words=True): a list of ints is taken as ids as it is
  (get_input_ids), prepare_for_model adds the published build_inputs_with_special_tokens, and
  pad() calls the published _pad with DO_NOT_PAD; return_tensors is ignored (lists, not tensors).
- decode(ids, skip_special_tokens=False): _decode: the published _convert_id_to_token for each id
  (no added-tokens table), the published convert_tokens_to_string on them all (no added token
  splits the list; no tokens gives ""), no clean-up (the published __init__ passes
  clean_up_tokenization_spaces=False).
Everything else (SPTokenizer, the specials, build_chat_input, build_single_message, get_command,
_pad) is the published file's.
"""
from .tokenization_utils_base import BatchEncoding
from .utils import PaddingStrategy


class PreTrainedTokenizer:
    def __init__(self, **kwargs):
        self.padding_side = kwargs.pop("padding_side", "right")
        self.clean_up_tokenization_spaces = kwargs.pop("clean_up_tokenization_spaces", True)
        self.init_kwargs = dict(kwargs)

    def tokenize(self, text, **kwargs):
        return self._tokenize(text) if text else []

    def convert_tokens_to_ids(self, tokens):
        return [self._convert_token_to_id(t) for t in tokens]

    def encode(self, text, add_special_tokens=True, **kwargs):
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        return self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids

    def batch_encode_plus(self, batch, is_split_into_words=False, return_tensors=None, add_special_tokens=True, **kwargs):
        out = {"input_ids": [], "attention_mask": [], "position_ids": []}
        for item in batch:
            if not (isinstance(item, (list, tuple)) and (len(item) == 0 or isinstance(item[0], int))):
                raise NotImplementedError("the stand-in takes lists of ids only")
            ids = self.build_inputs_with_special_tokens(list(item)) if add_special_tokens else list(item)
            padded = self._pad({"input_ids": ids}, padding_strategy=PaddingStrategy.DO_NOT_PAD)
            for key in out:
                out[key].append(padded[key])
        return BatchEncoding(out)

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        return [self._convert_id_to_token(int(i)) for i in ids]

    def decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        tokens = self.convert_ids_to_tokens(token_ids)
        text = self.convert_tokens_to_string(tokens) if tokens else ""
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        if clean:
            raise NotImplementedError("the stand-in has no clean-up (ChatGLM3-6B turns it off)")
        return text
