import logging as _logging


class logging:  # noqa: N801 -- the published files call transformers.utils.logging.get_logger
    @staticmethod
    def get_logger(name):
        return _logging.getLogger(name)


def add_code_sample_docstrings(*args, **kwargs):
    return lambda f: f


def add_start_docstrings(*args, **kwargs):
    return lambda f: f


def add_start_docstrings_to_model_forward(*args, **kwargs):
    return lambda f: f


class PaddingStrategy:
    """transformers.utils.PaddingStrategy's members (an ExplicitEnum of strings there)."""
    LONGEST = "longest"
    MAX_LENGTH = "max_length"
    DO_NOT_PAD = "do_not_pad"
