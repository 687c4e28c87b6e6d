"""A stand-in for transformers, for running the published ChatGLM modeling code where transformers
is absent (Debian): only the names those files import, none of the library's behaviour. Used by
test/crosscheck/published_check.py and chatglm3_tokenizer_check.py through
PYTHONPATH=test/crosscheck/hf_standin (README.md there); never on the path otherwise. The one
piece with behaviour, PreTrainedTokenizer, says in tokenization_utils.py what it does. The published classes' own code (layers, forward passes,
masks, positions, prefix encoders) runs unchanged on top of it.
"""


class PretrainedConfig:
    """Holds the keyword arguments as attributes, as PretrainedConfig does with unknown keys,
    plus the few defaults the published code reads."""
    model_type = ""
    output_attentions = False
    output_hidden_states = False
    use_return_dict = True
    max_length = 20

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)


from .tokenization_utils import PreTrainedTokenizer  # noqa: E402

__version__ = "hf_standin"
