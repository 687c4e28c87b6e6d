class LogitsProcessorList(list):
    pass


class StoppingCriteriaList(list):
    pass


class GenerationConfig:
    pass


class ModelOutput(dict):
    pass
