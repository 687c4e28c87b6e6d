class _Output(dict):
    """Attribute and key access; integer index over the non-None fields, like ModelOutput."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.__dict__.update(kw)

    def __getitem__(self, i):
        if isinstance(i, int):
            return [v for v in self.values() if v is not None][i]
        return super().__getitem__(i)


class BaseModelOutputWithPast(_Output):
    pass


class CausalLMOutputWithPast(_Output):
    pass


class BaseModelOutputWithPastAndCrossAttentions(_Output):
    pass


class SequenceClassifierOutputWithPast(_Output):
    pass
