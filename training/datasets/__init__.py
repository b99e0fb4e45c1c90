"""Training datasets: the TrajScene-60K reader and a seeded synthetic TrajScene-layout generator."""
from .samples import TrajSceneBatch, TrajSceneSample, collate_samples, fit_video, prepare_sample
from .trajscene import TrajSceneDataset

__all__ = ["TrajSceneDataset", "TrajSceneBatch", "TrajSceneSample", "collate_samples", "fit_video", "prepare_sample"]
