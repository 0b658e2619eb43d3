"""Phase-wise training: the phase plan, the trainer loop, checkpoints, metrics and plots."""
from phasenets.train.evaluate import evaluate_checkpoint, load_trained_model
from phasenets.train.plan import Phase, build_plan
from phasenets.train.sources import FrozenPrefixSource
from phasenets.train.trainer import PhaseResult, PhaseTrainer, TrainResult

__all__ = [
    "FrozenPrefixSource", "Phase", "PhaseResult", "PhaseTrainer", "TrainResult", "build_plan",
    "evaluate_checkpoint", "load_trained_model",
]
