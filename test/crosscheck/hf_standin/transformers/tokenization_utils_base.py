"""The names tokenization_chatglm.py imports from transformers.tokenization_utils_base."""
from typing import List

EncodedInput = List[int]


class BatchEncoding(dict):
    """A dict, as transformers' BatchEncoding is one (no tensors here: lists stay lists)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e
