"""``pip install .`` ships every file of the nano model: the pyproject package-data globs, expanded as setuptools
expands them (relative to the package folder, ``*`` not crossing folders), cover each tracked file under
``moge4d_core/nano_model/`` (sub-folders included: the ViSM and pixel VAE sit in ComfyUI-named folders)."""
import subprocess
import tomllib

from conftest import ROOT


def test_package_data_ships_every_nano_model_file():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["moge4d_core"]
    package = ROOT / "moge4d_core"
    shipped = {p.relative_to(package).as_posix() for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "moge4d_core/nano_model"], capture_output=True,
                             text=True, check=True).stdout.split()
    wanted = {t[len("moge4d_core/"):] for t in tracked}
    assert {"nano_model/vae/moge4d_nano_vae.safetensors", "nano_model/diffusion_models/moge4d_nano_vism.safetensors",
            "nano_model/strag.safetensors"} <= wanted
    assert wanted <= shipped, sorted(wanted - shipped)
