"""What a study measures of each run's model: the evaluation tasks of its cell, in the new world and the old, and
the methods that train nothing (the starting model, WiSE-FT, early stopping)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from modeling_psdclip.utils import write_json_atomically

from eval.data import CLEAN, EvalData, load_eval_data
from eval.errors import EvalInputError
from eval.linear_probe import linear_probe
from eval.model import EmbeddingModel
from eval.noisy_pairs import noisy_pair_detection
from eval.retrieval import retrieval
from eval.zeroshot import zero_shot_classification

from .plan import Run, fine_tunes, starting_model_folder, synthetic_noise
from .training_runs import training_record

EVAL_VERSION = 3  # part of each run's eval.json: bump it when evaluation changes, and finished runs are re-evaluated
ATTRIBUTES = ("shape", "colour", "count")


SHIFTED_SPLITS = ("sketch", "unseen_texture", "unseen_shade")


DATA_LABELS = ("group", "subgroup")  # the class columns of a folder built by modeling_psdclip.data.openmoji


def evaluate(study: dict, run: Run, folder: Path) -> dict:
    """Every metric of one trained run, and what its training logged."""
    return {**measure(study, run, folder / "model", run.name), **training_record(folder)}


def evaluate_starting_model(study: dict, run: Run, root: Path) -> dict:
    """The starting model's measures (on `run`'s cell and seed), cached in the study's output for that very model
    (its path and the times its files were written) and evaluation version."""
    folder = starting_model_folder(study)
    stamp = {"version": EVAL_VERSION, "model": str(folder.resolve()),
             "written_ns": max(path.stat().st_mtime_ns for path in folder.iterdir())}
    evaluated = root / "pretrained" / "eval.json"
    cached = json.loads(evaluated.read_text()) if evaluated.is_file() else {}
    if any(cached.get(key) != value for key, value in stamp.items()):
        evaluated.parent.mkdir(parents=True, exist_ok=True)
        cached = {**stamp, **measure(study, run, folder, "starting model")}
        write_json_atomically(evaluated, cached)
    return {key: value for key, value in cached.items() if key not in stamp}


def eval_settings(study: dict) -> dict:
    return {"num_samples": 1000, "noisy_pairs": 2000, "batch_size": 256, "linear_probe": True, "shifted": True,
            **study["eval"]}


def load_model(study: dict, model_folder: Path, name: str) -> EmbeddingModel:
    return EmbeddingModel.from_pretrained(model_folder, name=name, batch_size=eval_settings(study)["batch_size"],
                                          progress=False)


def measure(study: dict, run: Run, model_folder: Path, name: str) -> dict:
    """The evaluation tasks of `run`'s cell on the model in `model_folder`."""
    return measure_model(study, run, load_model(study, model_folder, name))


def measure_model(study: dict, run: Run, model: EmbeddingModel) -> dict:
    return evaluate_on_folder(model, run) if run.data else \
        evaluate_on_synthetic(model, study, run, eval_settings(study))


def synthetic_split(model: EmbeddingModel, settings: dict, split: str, attribute: str = "shape", **options) -> EvalData:
    """A built-in split at the model's input size, `num_samples` of it unless `options` say otherwise."""
    options.setdefault("num_samples", settings["num_samples"])
    return load_eval_data(f"synthetic:{split}", label_column=f"label_{attribute}",
                          image_size=model.model.config.vision_config.image_size, **options)


def pairs_like_the_runs(model: EmbeddingModel, settings: dict, study: dict, run: Run, seed: int,
                        **options) -> EvalData:
    """Training pairs drawn as `run`'s were (its world, its caption noise): with its seed and number of pairs, exactly
    the pairs it trained on (train.py's generator arguments: which scene a mismatched caption describes depends on
    the number of pairs); with another seed, held-out pairs of the same kind."""
    noise = {key: value for key, value in synthetic_noise(study, run).items() if key.startswith("p_")}
    return synthetic_split(model, settings, "train", world=run.world, seed=seed, **noise, **options)


def old_world(study: dict) -> str:
    """The world the starting model was trained in (its `pretrain` options'; a given starting model's is not known
    and taken as the standard one)."""
    return (study.get("pretrain") or {}).get("synthetic_world", "standard")


def evaluate_on_synthetic(model: EmbeddingModel, study: dict, run: Run, settings: dict) -> dict:
    def data(split, attribute="shape", **options):
        return synthetic_split(model, settings, split, attribute, **{"world": run.world, **options})

    test = {attribute: data("test", attribute) for attribute in ATTRIBUTES}
    results = zero_shot_accuracies(model, test)
    val = data("val")
    results.update(retrieval_recalls(model, val))
    if fine_tunes(study) and old_world(study) != run.world:
        # What fine-tuning in a new world forgets of the old one, measured the same way.
        old = {attribute: data("test", attribute, world=old_world(study)) for attribute in ATTRIBUTES}
        results.update({f"old_{key}": value for key, value in [*zero_shot_accuracies(model, old).items(),
                        *retrieval_recalls(model, data("val", world=old_world(study))).items()]})
    if settings["linear_probe"]:
        results["linear_probe_shape"] = linear_probe(model, val, test["shape"], seed=run.seed)["top1_accuracy"]
    if settings["shifted"]:
        shifted = {split: zero_shot_classification(model, data(split))["top1_accuracy"] for split in SHIFTED_SPLITS}
        results["shifted"] = shifted
        results["shifted_accuracy"] = sum(shifted.values()) / len(shifted)
    # A seeded sample of `noisy_pairs` of exactly the pairs the run trained on.
    trained_pairs = pairs_like_the_runs(model, settings, study, run, seed=run.seed, num_samples=run.train_samples)
    results["noisy_pair_auroc"] = noisy_pair_auroc(model, trained_pairs.sample(settings["noisy_pairs"], run.seed),
                                                   run.seed)
    return results


def evaluate_on_folder(model: EmbeddingModel, run: Run) -> dict:
    test = {label: load_eval_data(f"{run.data}:test", label_column=label) for label in DATA_LABELS}
    results = zero_shot_accuracies(model, test)
    results.update(retrieval_recalls(model, test[DATA_LABELS[0]]))
    results["noisy_pair_auroc"] = noisy_pair_auroc(model, load_eval_data(f"{run.data}:train"), run.seed)
    return results


def zero_shot_accuracies(model: EmbeddingModel, labelled: dict[str, EvalData]) -> dict:
    """`zeroshot_<label>` top-1 accuracy for each labelling of the same images, encoded once."""
    image_features = model.encode_images(next(iter(labelled.values())).images)
    return {f"zeroshot_{label}": zero_shot_classification(model, data, image_features=image_features)["top1_accuracy"]
            for label, data in labelled.items()}


def retrieval_recalls(model: EmbeddingModel, data: EvalData) -> dict:
    """Recall@1 and @5 each way (identical caption texts as one item) and `retrieval_r1`, the mean of the R@1s."""
    found = retrieval(model, data, k=(1, 5))
    recalls = {f"{short}_r{k}": found[f"{direction}_recall@{k}"] for k in (1, 5)
               for short, direction in (("i2t", "image_to_text"), ("t2i", "text_to_image"))}
    return {"retrieval_r1": (recalls["i2t_r1"] + recalls["t2i_r1"]) / 2, **recalls}


def noisy_pair_auroc(model: EmbeddingModel, data: EvalData, seed: int) -> float | None:
    """None when no pair is labelled noisy: there is nothing to detect."""
    if data.noise is None or all(label == CLEAN for label in data.noise):
        return None
    return noisy_pair_detection(model, data, seed=seed)[0].get("auroc")


# WiSE-FT's coefficients: 0 is the starting model, 1 the fine-tuned one.
WISE_FT_COEFFICIENTS = tuple(step / 10 for step in range(11))


NOISY_VALIDATION_SEED = 10_000  # apart from every run's seed: pairs no run trained on


def evaluate_without_training(study: dict, run: Run, root: Path) -> dict:
    """The measures of a method that trains nothing (its `evaluate`): the starting model itself, or WiSE-FT."""
    method = study["methods"][run.method]
    if method["evaluate"] == "start":
        return measure(study, run, starting_model_folder(study), run.name)
    return {"wise_ft": wise_ft, "early_stopping": early_stopping}[method["evaluate"]](study, run, root, method)


def fine_tuned_model(study: dict, run: Run, root: Path, method: dict) -> tuple[EmbeddingModel, Path]:
    """The `of` method's model of `run`'s cell and seed, and its run folder."""
    fine_tuned_run = Run(method["of"], run.noise, run.train_samples, run.seed, run.data, run.world)
    folder = root / "runs" / fine_tuned_run.name
    if not (folder / "model" / "metrics.json").is_file():
        raise EvalInputError(f"run {run.name} needs {fine_tuned_run.name}, which has not finished: list the method "
                             f"{method['of']!r} before {run.method!r}")
    return load_model(study, folder / "model", run.name), folder


def choose_weights(study: dict, run: Run, model: EmbeddingModel, candidates: dict, choose_on: str) -> tuple:
    """Load into `model` the candidate weights (`{key: function giving a state dict}`) with the best mean retrieval
    R@1 on `choose_on` data: `noisy`, held-out pairs drawn like the fine-tuning pairs (noise included: what a user
    has), or `clean`, the held-out split the study reports (an oracle). Returns the key chosen (the first of equal
    scores, so list the candidates nearest the start first) and every candidate's score."""
    settings = eval_settings(study)
    if choose_on == "clean":
        choice_data = synthetic_split(model, settings, "val", world=run.world)
    else:
        choice_data = pairs_like_the_runs(model, settings, study, run, seed=NOISY_VALIDATION_SEED + run.seed)
    scores = {}
    for key, weights in candidates.items():
        model.model.load_state_dict(weights())
        scores[key] = retrieval_recalls(model, choice_data)["retrieval_r1"]
    chosen = max(scores, key=scores.get)
    model.model.load_state_dict(candidates[chosen]())
    return chosen, [[key, score] for key, score in scores.items()]


def wise_ft(study: dict, run: Run, root: Path, method: dict) -> dict:
    """WiSE-FT (Wortsman et al., CVPR 2022): the weights `(1 - c) start + c fine-tuned`, with the fine-tuned model
    the `of` method's run of the same cell and seed, and c the one of `WISE_FT_COEFFICIENTS` that `choose_weights`
    picks on the method's `choose_on` data."""
    model, _ = fine_tuned_model(study, run, root, method)
    start = load_model(study, starting_model_folder(study), "starting model").model.state_dict()
    fine_tuned = {name: tensor.clone() for name, tensor in model.model.state_dict().items()}
    candidates = {coefficient: functools.partial(interpolated, start, fine_tuned, coefficient)
                  for coefficient in WISE_FT_COEFFICIENTS}
    chosen, scores = choose_weights(study, run, model, candidates, method["choose_on"])
    return {**measure_model(study, run, model), "wise_ft_coefficient": chosen, "choice_scores": scores}


def interpolated(start: dict, end: dict, coefficient: float) -> dict:
    return {name: torch.lerp(start[name].float(), tensor.float(), coefficient).to(tensor.dtype)
            for name, tensor in end.items()}


def early_stopping(study: dict, run: Run, root: Path, method: dict) -> dict:
    """Early stopping: of the `of` method's run, the checkpoint (or final model) that `choose_weights` picks on the
    method's `choose_on` data. The `of` method must keep its checkpoints (`checkpoint_every`, `keep_checkpoints`)."""
    model, folder = fine_tuned_model(study, run, root, method)
    final = {name: tensor.clone() for name, tensor in model.model.state_dict().items()}
    checkpoints = sorted((folder / "run" / "checkpoints").glob("step-*"))
    if not checkpoints:
        raise EvalInputError(f"run {run.name} chooses among the checkpoints of {folder}, which kept none: give the "
                             f"method {method['of']!r} checkpoint_every and keep_checkpoints")
    candidates = {int(path.name.removeprefix("step-")): functools.partial(load_file, path / "model.safetensors")
                  for path in checkpoints}
    candidates.setdefault(json.loads((folder / "model" / "metrics.json").read_text())["steps"], lambda: final)
    chosen, scores = choose_weights(study, run, model, candidates, method["choose_on"])
    return {**measure_model(study, run, model), "stopped_at_step": chosen, "choice_scores": scores}

