"""The loader nodes' memory widget takes the CLI's mode names: fp8 stores the DiT's big Linear weights as float8,
block_swap:N keeps N blocks (and the non-block weights) with the compute device and streams the others through
diffusers' group offloading; a bad mode is refused naming the valid forms."""
import pytest
import torch

from conftest import load_nodes
from moge4d_core.errors import MoGe4DInputError


@pytest.fixture()
def nodes(tmp_path):
    return load_nodes(tmp_path)


def _node(nodes, node_id):
    return next(n for n in nodes.NODE_LIST if n.define_schema().node_id == node_id)


def _offloaded(module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("group_offloading") is not None


def test_block_swap_keeps_n_blocks_and_streams_the_rest(nodes):
    (patcher,) = _node(nodes, "MoGe4DLoadSTraG").execute(file="nano (built-in)", precision="fp32",
                                                          memory="block_swap:2").args
    blocks = patcher.model.inner.blocks                  # the core DiT inside the ModelPatcher
    assert [_offloaded(b) for b in blocks] == [i >= 2 for i in range(len(blocks))]


def test_fp8_mode_stores_float8_and_auto_keeps_the_switches(nodes):
    (fp8,) = _node(nodes, "MoGe4DLoadViSM").execute(file="nano (built-in)", precision="fp32", memory="fp8").args
    (plain,) = _node(nodes, "MoGe4DLoadViSM").execute(file="nano (built-in)", precision="fp32").args

    def dtypes(p):
        return {w.dtype for w in p.model.inner.parameters()}
    assert torch.float8_e4m3fn in dtypes(fp8) and torch.float8_e4m3fn not in dtypes(plain)


def test_a_bad_mode_is_refused(nodes):
    with pytest.raises(MoGe4DInputError, match="Valid forms"):
        _node(nodes, "MoGe4DLoadSTraG").execute(file="nano (built-in)", memory="block_swap")


def test_attention_backend_widget_falls_back_with_a_message_and_refuses_typos(nodes, caplog):
    import logging

    from moge4d_core.pipeline.speed import attention_backends
    missing = "sage" if "sage" in attention_backends() else "flash"
    with caplog.at_level(logging.WARNING, logger="moge4d"):
        (patcher,) = _node(nodes, "MoGe4DLoadSTraG").execute(file="nano (built-in)", precision="fp32",
                                                              attention_backend=missing).args
    assert any(f"attention backend '{missing}' is not available" in r.getMessage() for r in caplog.records)
    with pytest.raises(MoGe4DInputError, match="unknown attention backend"):
        _node(nodes, "MoGe4DLoadViSM").execute(file="nano (built-in)", attention_backend="flsh")
