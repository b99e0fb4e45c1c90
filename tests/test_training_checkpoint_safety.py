"""Checkpoints hold nothing that runs code: every file a resume reads is JSON or safetensors; a crafted pickle in
any of them (or in the old accelerate file names) never runs and the error names the file; a truncated file is
named and ``--resume latest`` falls back to the newest intact checkpoint; a full disk while writing removes the
temporary folder and says "disk full"."""
import errno
import json
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moge4d_core.errors import MoGe4DInputError
from training.checkpoint import _rng_state, _set_rng_state, list_checkpoints, validate_checkpoint
from training.state_files import read_state, write_state
from training_helpers import DATA_ARGS, STRAG_CFG, tiny_motion_vae, tree_snapshot, write_data, write_json

torch.set_num_threads(1)

RESUME_READS = ["trainer_state.json", "trainable.safetensors", "optimizer.json", "optimizer.safetensors",
                "scheduler.json", "scheduler.safetensors", "rng-0.json", "rng-0.safetensors"]
LEGACY = ["accelerate/optimizer.bin", "accelerate/custom_checkpoint_0.pkl", "accelerate/random_states_0.pkl",
          "accelerate/scaler.pt", "accelerate/pytorch_model_fsdp_0/.metadata"]


class _Evil:
    """Unpickling this creates ``self.marker`` (what a code-running pickle in a checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(marker, torch_zip: bool) -> bytes:
    if torch_zip:
        import io

        buf = io.BytesIO()
        torch.save({"state": _Evil(marker)}, buf)
        return buf.getvalue()
    return pickle.dumps({"state": _Evil(marker)}, protocol=4)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from moge4d_core.loading.motion_vae import save_motion_vae
    from training.train_strag import train

    root = tmp_path_factory.mktemp("ckpt_safety")
    env = dict(root=root, data=write_data(root / "data", 2), vae=save_motion_vae(tiny_motion_vae(), root / "m.safetensors"),
               cfg=write_json(root / "strag.json", STRAG_CFG))
    env["ref"] = train(_args(env, root / "ref", "--max-steps", "3", "--checkpoint-every", "1",
                             "--keep-checkpoints", "5", "--warmup-steps", "2"))
    return env


def _args(env, out, *extra):
    return ["--data", str(env["data"]), "--out", str(out), "--motion-vae", str(env["vae"]), "--init-config",
            str(env["cfg"]), "--lr", "1e-3", *DATA_ARGS, *extra]


def _copy(env, step, dest):
    src = env["root"] / "ref" / f"checkpoint-{step}"
    dst = dest / f"checkpoint-{step}"
    shutil.copytree(src, dst)
    return dst


def test_state_files_roundtrip_exactly_and_rng_restores(tmp_path):
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1e-3, "name": "all"}])
    p.grad = torch.randn(5)
    opt.step()
    sd = opt.state_dict()
    tree = {"opt": sd, "np": np.arange(7, dtype=np.uint32), "f": [float("nan"), float("inf"), 0.1],
            "t": (1, "a", None, True), 3: {"__tensor__": "x"}, "bf": torch.ones(2, dtype=torch.bfloat16)}
    write_state(tmp_path / "s", tree, "test")
    back = read_state(tmp_path / "s", "test")
    assert back["opt"]["param_groups"] == sd["param_groups"]               # tuples (betas) stay tuples
    assert isinstance(back["opt"]["param_groups"][0]["betas"], tuple)
    assert list(back["opt"]["state"]) == [0]                                # int keys stay ints
    for k, v in sd["state"][0].items():
        assert back["opt"]["state"][0][k].dtype == v.dtype and torch.equal(back["opt"]["state"][0][k], v)
    assert back["np"].dtype == np.uint32 and np.array_equal(back["np"], np.arange(7))
    assert np.isnan(back["f"][0]) and back["f"][1:] == [float("inf"), 0.1] and back["t"] == (1, "a", None, True)
    assert back[3] == {"__tensor__": "x"} and back["bf"].dtype == torch.bfloat16
    with pytest.raises(MoGe4DInputError, match="'rng' state was expected"):
        read_state(tmp_path / "s", "rng")

    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    write_state(tmp_path / "rng", _rng_state(), "rng")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    _set_rng_state(read_state(tmp_path / "rng", "rng"), tmp_path / "rng.json")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_checkpoint_holds_no_pickle(env):
    ck = env["root"] / "ref" / "checkpoint-3"
    state = validate_checkpoint(ck)
    names = sorted(p.name for p in ck.iterdir())
    assert names == sorted(["trainer_state.json", *state["files"]]) and set(RESUME_READS) <= set(names)
    for p in ck.iterdir():
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK"                       # neither a pickle nor a torch zip


@pytest.mark.parametrize("name", RESUME_READS)
def test_a_crafted_pickle_in_any_file_a_resume_reads_never_runs(env, tmp_path, name):
    from training.train_strag import train

    marker = tmp_path / "PWNED"
    ck = _copy(env, 2, tmp_path / "run")
    (ck / name).write_bytes(_crafted(marker, torch_zip=name.endswith(".safetensors")))
    before = tree_snapshot(ck)
    for resume in (str(ck), "latest"):
        with pytest.raises(MoGe4DInputError) as e:
            train(_args(env, tmp_path / "run", "--max-steps", "3", "--resume", resume))
        assert str(ck / name) in str(e.value), str(e.value)
        assert not marker.exists()
    assert tree_snapshot(ck) == before
    # the readers themselves refuse it too (not only the up-front check)
    if name != "trainer_state.json" and name != "trainable.safetensors":
        stem = name.rsplit(".", 1)[0]
        kind = {"optimizer": "optimizer", "scheduler": "scheduler"}.get(stem, "rng")
        with pytest.raises(MoGe4DInputError, match=str(ck / name).replace(".", r"\.")):
            read_state(ck / stem, kind)
    assert not marker.exists()


def test_old_accelerate_pickles_are_ignored_or_refused(env, tmp_path, capsys):
    from training.train_strag import train

    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    ck = _copy(env, 2, out)
    for name in LEGACY:                                        # planted beside an intact checkpoint: ignored
        (ck / name).parent.mkdir(parents=True, exist_ok=True)
        (ck / name).write_bytes(_crafted(marker, torch_zip=name.endswith((".bin", ".pt"))))
    r = train(_args(env, out, "--max-steps", "3", "--resume", str(ck), "--warmup-steps", "2"))
    assert r.resumed_from == ck and r.losses == env["ref"].losses and not marker.exists()

    old = tmp_path / "old" / "checkpoint-2"                     # a checkpoint of the old layout: refused
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text(json.dumps({**json.loads((ck / "trainer_state.json").read_text()),
                                                        "format": 1, "files": None}))
    shutil.copy(ck / "trainable.safetensors", old)
    shutil.copytree(ck / "accelerate", old / "accelerate")
    with pytest.raises(MoGe4DInputError, match="older version.*pickle.*never loaded") as e:
        train(_args(env, tmp_path / "old", "--max-steps", "3", "--resume", str(old)))
    assert str(old) in str(e.value) and not marker.exists()
    with pytest.raises(MoGe4DInputError, match="no intact checkpoint"):
        train(_args(env, tmp_path / "old", "--max-steps", "3", "--resume", "latest"))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["optimizer.safetensors", "scheduler.json", "rng-0.safetensors"])
def test_truncated_file_is_named_and_latest_falls_back_to_an_intact_checkpoint(env, tmp_path, capsys, name):
    from training.train_strag import train

    out = tmp_path / "run"
    _copy(env, 1, out)
    ck2 = _copy(env, 2, out)
    data = (ck2 / name).read_bytes()
    (ck2 / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(MoGe4DInputError) as e:
        train(_args(env, out, "--max-steps", "3", "--resume", str(ck2)))
    assert str(ck2 / name) in str(e.value) and "damaged" in str(e.value)

    capsys.readouterr()
    r = train(_args(env, out, "--max-steps", "3", "--resume", "latest", "--warmup-steps", "2",
                    "--checkpoint-every", "1", "--keep-checkpoints", "5"))
    err = capsys.readouterr().err
    assert r.resumed_from == out / "checkpoint-1"
    assert f"skipping {ck2}" in err and str(ck2 / name) in err and f"resuming from {out / 'checkpoint-1'}" in err
    assert r.losses == env["ref"].losses                      # the fallback run is the uninterrupted one, exactly
    a = load_file(str(out / "checkpoint-3" / "trainable.safetensors"))
    b = load_file(str(env["root"] / "ref" / "checkpoint-3" / "trainable.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_disk_full_while_writing_removes_the_temp_folder_and_says_so(env, tmp_path, monkeypatch):
    import training.state_files as sf
    from training.train_strag import train

    real = sf.write_safetensors
    calls = []

    def full_on_second_checkpoint(tensors, path, metadata=None):
        calls.append(path)
        if "checkpoint-2" in str(path) and path.name == "optimizer.safetensors":
            real(tensors, path, metadata)                       # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path, metadata)

    monkeypatch.setattr(sf, "write_safetensors", full_on_second_checkpoint)
    out = tmp_path / "run"
    with pytest.raises(MoGe4DInputError) as e:
        train(_args(env, out, "--max-steps", "3", "--checkpoint-every", "1"))
    msg = str(e.value)
    assert "disk full" in msg and str(out / ".tmp-checkpoint-2") in msg and "--resume latest" in msg
    assert not (out / ".tmp-checkpoint-2").exists()
    assert [s for s, _ in list_checkpoints(out)] == [1]
    validate_checkpoint(out / "checkpoint-1")

    def other_error(tensors, path, metadata=None):              # any other failure: cleaned up, original error
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(sf, "write_safetensors", other_error)
    with pytest.raises(OSError, match="simulated I/O error") as e:
        train(_args(env, out, "--max-steps", "3", "--resume", "latest", "--checkpoint-every", "1"))
    assert not isinstance(e.value, MoGe4DInputError)
    assert any(".tmp-checkpoint-2" in n for n in getattr(e.value, "__notes__", []))
    assert not (out / ".tmp-checkpoint-2").exists() and [s for s, _ in list_checkpoints(out)] == [1]
