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
