"""The latent caches used to train the nano model give exactly the uncached trainers' losses."""
import json

import torch

from moge4d_core.loading.motion_vae import save_motion_vae
from moge4d_core.models import nano
from moge4d_core.models.wan_dit import config_to_json, dit_config
from training.nano.data import ColourCodedObjects, write_nano_dataset
from training.nano.cached import CachedStragTask, CachedVismTask
from training.options import coerce_options
from training.nano.trajectory_loss import TrajectoryStragOptions
from training.train_strag import StragTask
from training.train_vism import VismOptions, VismTask

torch.set_num_threads(1)


def _tasks(tmp_path, cached_cls, plain_cls, options_cls, argv):
    out = []
    for cls in (cached_cls, plain_cls):
        t = cls(coerce_options(options_cls, argv, "test"))
        t.setup(torch.device("cpu"))
        out.append(t)
    return out


def _batch(task, n=2):
    ds = task.datasets()[0]
    return task.collate([ds[i] for i in range(n)])


def _same_loss(cached, plain, batch, model, steps=2):
    for step in range(steps):                      # the second step reads the cache
        a, _ = cached.loss(model, batch, torch.Generator().manual_seed(step))
        b, _ = plain.loss(model, batch, torch.Generator().manual_seed(step))
        # The cache encodes each sample alone, the trainer the whole batch: on CPUs whose kernels sum in a
        # batch-size-dependent order the two differ in the last bits (1e-7 relative seen on a 2-core AVX2 host).
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0, msg=lambda m: f"step {step}: {m}")


def test_cached_strag_and_vism_losses_equal_the_trainers(tmp_path):
    write_nano_dataset(tmp_path / "data", 2, height=16, width=16, frames=5, seed=1, motion_scale=1.0,
                       objects=ColourCodedObjects())
    save_motion_vae(nano.build_motion_vae(nano.TINY, 0), tmp_path / "mvae.safetensors")
    vae = nano.build_wan_vae(nano.TINY, 1)
    from moge4d_core.loading.motion_vae import wan_vae_diffusers_to_original
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in wan_vae_diffusers_to_original(vae.state_dict(), dict(vae.config)).items()},
              str(tmp_path / "vae.safetensors"))
    (tmp_path / "strag.json").write_text(json.dumps(config_to_json(dit_config(nano.strag_config(nano.TINY),
                                                                               mpm_feature_dim=None))))
    (tmp_path / "vism.json").write_text(json.dumps(config_to_json(nano.vism_config(nano.TINY))))
    common = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--frames", "5", "--crop", "none",
              "--grid", "16x16"]
    model = nano.build_strag(nano.TINY.__class__(**{**nano.TINY.__dict__, "mpm_dim": None}), 3)
    losses = []
    for reference in ([], ["--reference"]):           # zero reference latent (release) and the image's
        cached, plain = _tasks(tmp_path, CachedStragTask, StragTask, TrajectoryStragOptions,
                               common + ["--init-config", str(tmp_path / "strag.json"), "--motion-vae",
                                         str(tmp_path / "mvae.safetensors"), *reference])
        batch = _batch(plain)
        _same_loss(cached, plain, batch, model)
        assert len(cached._latent_cache) == 2
        losses.append(float(plain.loss(model, batch, torch.Generator().manual_seed(0))[0].detach()))
    assert losses[0] != losses[1]                     # the reference latent reaches the model
    cached, plain = _tasks(tmp_path, CachedVismTask, VismTask, VismOptions,
                           common + ["--init-config", str(tmp_path / "vism.json"), "--full", "--vae",
                                     str(tmp_path / "vae.safetensors")])
    _same_loss(cached, plain, _batch(cached), nano.build_vism(nano.TINY, 4))
    assert len(cached._latent_cache) == 2
