import torch


class PreTrainedModel(torch.nn.Module):
    """An nn.Module holding the config; weights are loaded by the caller (load_state_dict)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__()
        self.config = config

    def post_init(self):
        pass
