"""Training datasets: the TrajScene-60K reader and a seeded synthetic TrajScene-layout generator."""
from .samples import TrajSceneSample, collate_samples, fit_video, prepare_sample
from .trajscene import TrajSceneDataset

__all__ = ["TrajSceneDataset", "TrajSceneSample", "collate_samples", "fit_video", "prepare_sample"]
