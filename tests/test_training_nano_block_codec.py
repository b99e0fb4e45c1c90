"""training.nano.block_codec: a Wan VAE set by hand to an exact per-frame 8×8 block-mean codec."""
import pytest
import torch
import torch.nn.functional as F

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.nano import NANO, TINY, wan_vae_kwargs
from training.nano.block_codec import block_codec_wan_vae

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return block_codec_wan_vae(**wan_vae_kwargs(NANO)).eval()


def _video(frames=9, h=16, w=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h, w, generator=g) * 1.8 - 0.9


def test_latent_holds_each_frames_block_means(codec):
    v = _video()
    with torch.no_grad():
        post = codec.encode(v).latent_dist
    blocks = F.avg_pool3d(v, (1, 8, 8))                              # (1,3,T,h,w)
    mu = post.mean
    assert mu.shape == (1, 16, 3, 2, 3)
    torch.testing.assert_close(mu[:, :3, 0], blocks[:, :, 0], atol=2e-4, rtol=1e-3)
    assert mu[:, 3:12, 0].abs().max() == 0
    for j in (1, 2):
        for i in range(4):                                              # frame 4j-3+i in channels 3i..3i+2
            torch.testing.assert_close(mu[:, 3 * i:3 * i + 3, j], blocks[:, :, 4 * j - 3 + i], atol=2e-4, rtol=1e-3)
        torch.testing.assert_close(mu[:, 12:15, j], blocks[:, :, 4 * j - 3:4 * j + 1].mean(2), atol=2e-4, rtol=1e-3)
    assert torch.all(post.logvar == -10.0)


def test_decode_repeats_the_block_means(codec):
    v = _video(seed=2)
    with torch.no_grad():
        out = codec.decode(codec.encode(v).latent_dist.mean).sample
    want = F.avg_pool3d(v, (1, 8, 8)).repeat_interleave(8, 3).repeat_interleave(8, 4)
    assert out.shape == v.shape
    assert (out - want).norm() / want.norm() < 1e-3
    assert (out - v).norm() / v.norm() > 0.3                           # it is a block codec, not the identity


def test_residual_branches_start_at_zero_but_stay_trainable(codec):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock
    blocks = [m for m in codec.modules() if isinstance(m, WanResidualBlock)]
    assert blocks and all(b.conv2.weight.abs().max() == 0 for b in blocks)
    assert all(b.conv1.weight.abs().max() > 0 for b in blocks)         # random: gradients reach conv2 at once


def test_saved_motion_vae_keeps_the_codec(tmp_path, codec):
    from moge4d_core.loading.motion_vae import load_motion_vae, save_motion_vae
    from moge4d_core.models.motion_vae import MotionVAE
    from moge4d_core.models.nano import motion_vae_config
    mv = MotionVAE(motion_vae_config(NANO))
    mv.vae.load_state_dict(codec.state_dict())
    back = load_motion_vae(save_motion_vae(mv, tmp_path / "m.safetensors")).eval()
    v = _video(seed=3)
    with torch.no_grad():
        a = codec.encode(v).latent_dist.mean
        b = back.vae.encode(v).latent_dist.mean
    torch.testing.assert_close(a, b)


def test_other_layouts_are_refused():
    with pytest.raises(MoGe4DInputError, match="nano Wan VAE layout"):
        block_codec_wan_vae(**wan_vae_kwargs(TINY))
