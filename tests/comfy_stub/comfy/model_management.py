"""Stand-in for ``comfy.model_management``: CPU devices and a Cancel flag tests can raise."""
import torch


class InterruptProcessingException(Exception):
    pass


interrupt_after_calls = None  # set to an int to simulate Cancel after that many checks
_calls = 0


def throw_exception_if_processing_interrupted():
    global _calls
    _calls += 1
    if interrupt_after_calls is not None and _calls > interrupt_after_calls:
        raise InterruptProcessingException()


def reset_interrupt():
    global _calls, interrupt_after_calls
    _calls, interrupt_after_calls = 0, None


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


loaded_models_log = []  # every list passed to load_models_gpu


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    loaded_models_log.append(list(models))
    for m in models:
        m.patch_model(m.load_device)


def unet_dtype(device=None, model_params=0, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32],
               weight_dtype=None):
    return torch.float32
