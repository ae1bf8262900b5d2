"""Training engine: one call from a RunConfig to a trained, evaluated model and its run folder."""

from yolonb.engine.evaluate import Evaluation, evaluate_model, make_eval_loader
from yolonb.engine.predict import load_model, predict, rescale_boxes
from yolonb.engine.train import NonFiniteLossError, resolve_data, run_experiment

__all__ = [
    "Evaluation",
    "NonFiniteLossError",
    "evaluate_model",
    "load_model",
    "make_eval_loader",
    "predict",
    "rescale_boxes",
    "resolve_data",
    "run_experiment",
]
