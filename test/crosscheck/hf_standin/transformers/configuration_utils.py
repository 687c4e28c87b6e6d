from . import PretrainedConfig
