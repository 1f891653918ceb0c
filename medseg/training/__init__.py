"""Training: dataset sources, fingerprint/plan, patch sampling, augmentation, loop, checkpoints."""

from medseg.training.config import AugmentConfig, DataConfig, TrainConfig, load_config
from medseg.training.loop import TrainResult, train
from medseg.training.sources import CasePair, index_dataset

__all__ = ["AugmentConfig", "CasePair", "DataConfig", "TrainConfig", "TrainResult",
           "index_dataset", "load_config", "train"]
