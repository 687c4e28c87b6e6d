class LogitsProcessor:
    pass
