"""Stage-at-a-time residency (pipeline.residency): models come to the compute device for their stage only in
``model_offload``, stay in ``full``, go back after an error; ``block_swap:N`` streams all but N blocks of a DiT
through diffusers' group offloading and computes the same output. (CPU here: device and offload device are both
the CPU, so the moves are real ``.to`` calls and the bookkeeping is what is checked; the GPU suite measures memory.)
"""
import pytest
import torch
import torch.nn as nn

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.pipeline.residency import Residency, ResidencyEvent
from test_pipeline import models  # noqa: F401  (module fixture: tiny models in the official layouts)
from test_wan_dit_memory import fwd, inputs, tiny

torch.set_num_threads(1)


def _group_offloaded(module: nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("group_offloading") is not None


def test_model_offload_brings_each_stage_s_models_and_sends_them_back():
    a, b, c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
    res = Residency("cpu", "model_offload")
    with res.stage("text", text=a, clip=None):
        assert res.location(a) == "device" and res.location(b) == "unknown"
    assert res.location(a) == "offload"
    with res.stage("trajectories", strag=b, motion_vae=c):
        assert (res.location(a), res.location(b), res.location(c)) == ("offload", "device", "device")
    assert res.events == [ResidencyEvent("text", "text", "device"), ResidencyEvent("text", "text", "offload"),
                          ResidencyEvent("trajectories", "strag", "device"),
                          ResidencyEvent("trajectories", "motion_vae", "device"),
                          ResidencyEvent("trajectories", "strag", "offload"),
                          ResidencyEvent("trajectories", "motion_vae", "offload")]


def test_full_keeps_models_on_the_device_until_release():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    res = Residency("cpu", "full")
    with res.stage("one", a=a):
        pass
    with res.stage("two", a=a, b=b):
        pass
    assert res.location(a) == res.location(b) == "device"
    assert [e.where for e in res.events] == ["device", "device"]          # a came once, never left
    res.release()
    assert res.location(a) == res.location(b) == "offload"


def test_an_error_inside_a_stage_still_sends_its_models_back():
    a = nn.Linear(2, 2)
    res = Residency("cpu", "fp8")                                          # fp8 = fp8 + model_offload
    with pytest.raises(KeyboardInterrupt):
        with res.stage("cancelled", a=a):
            raise KeyboardInterrupt()
    assert res.location(a) == "offload"


def test_auto_and_bad_modes_are_refused_here():
    with pytest.raises(MoGe4DInputError, match="'auto' is not accepted"):
        Residency("cpu", "auto")
    with pytest.raises(MoGe4DInputError, match="Valid forms"):
        Residency("cpu", "block_swap")


@pytest.mark.parametrize("resident", [0, 1])
def test_block_swap_streams_only_the_other_blocks_and_computes_the_same(resident):
    model, inp = tiny(), inputs()
    want = fwd(model, inp)
    res = Residency("cpu", f"block_swap:{resident}")
    res.prepare(model, name="strag")
    assert [_group_offloaded(b) for b in model.blocks] == [i >= resident for i in range(len(model.blocks))]
    assert not _group_offloaded(model.patch_embedding)                    # non-block weights move whole
    with res.stage("trajectories", strag=model):
        got = fwd(model, inp)
    assert torch.equal(got, want)
    assert res.location(model) == "offload"


# ---------------------------------------------------------------------------------------------- in the pipeline
@pytest.mark.parametrize("mode", ["model_offload", "full"])
def test_the_pipeline_brings_each_stage_only_its_models(models, mode):  # noqa: F811
    from moge4d_core.pipeline.run import run_pipeline
    from moge4d_core.pipeline.settings import SamplerSettings
    from moge4d_core.pipeline.trajectory import TrajectoryOptions
    from test_pipeline import IMAGE, _text

    res = Residency("cpu", mode)
    m = {k: v for k, v in models.items() if k != "paths"}
    run_pipeline(image=IMAGE, positive=_text(), negative=_text(1), cameras=["orbit_left"],
                 trajectory_settings=SamplerSettings(steps=1, cfg=2.0), inpaint_settings=SamplerSettings(steps=1),
                 options=TrajectoryOptions(frames=5), size=(16, 16), residency=res, **m)
    came = {}
    for e in res.events:
        if e.where == "device":
            came.setdefault(e.stage, set()).add(e.model)
    # omnimae runs in its own stage (options.mpm); nothing else is brought where it is not used
    assert came == {"depth": {"unidepth"}, "motion features": {"omnimae"}, "trajectories": {"strag", "motion_vae"},
                    "inpaint": {"vism", "image_vae"}}
    where = {name: res.location(models[name]) for name in ("unidepth", "omnimae", "strag", "motion_vae", "vism")}
    assert set(where.values()) == ({"offload"} if mode == "model_offload" else {"device"})
    if mode == "model_offload":                         # each stage sends back exactly what it brought
        went = {}
        for e in res.events:
            if e.where == "offload":
                went.setdefault(e.stage, set()).add(e.model)
        assert went == came
