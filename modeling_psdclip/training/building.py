"""What a training run is built from: the model and processor (a preset, or a saved folder to fine-tune, with the
distillation options applied), the training and validation data and their loaders. A user mistake is an
OptionError naming the option."""

import pickle
from pathlib import Path

import torch
from accelerate.logging import get_logger
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoProcessor

# Through the package, which registers "psdclip" with the Auto classes (AutoProcessor may need AutoConfig).
from .. import PSDCLIPConfig, PSDCLIPModel
from ..data import (
    DataError, EpochSampler, ImageTextCollator, caption_noise, load_image_text_dataset, saved_with_splits,
)
from ..model_folder import PROCESSOR_FILES, ModelFolderError, model_type_of, pickle_weights_note, refused_pickle
from ..processing import build_processor
from ..utils import first_line
from .options import OptionError
from .step import feature_caching_unsupported
from .stops import leave_interrupts_to_the_main_process

logger = get_logger("train")


def build_model_and_processor(options):
    """A new model from `--preset` or the one in `--init-from`, with the distillation options applied."""
    model, processor = model_and_processor_to_start_from(options)
    if options.distill_teacher is not None and model.config.distill_alpha_max == 0:
        logger.warning(f"--distill-teacher {options.distill_teacher}: the teacher's final weight is 0 (the model's "
                       "distill_alpha_max), so nothing is distilled; pass --distill-alpha-max to distil",
                       main_process_only=True)
    return model, processor


def model_and_processor_to_start_from(options):
    """The model and processor `build_model_and_processor` starts from; OptionError when they cannot train."""
    overrides = {name: getattr(options, name) for name in
                 ("distill_alpha_max", "distill_fraction", "distill_schedule", "distill_temperature",
                  "distill_teacher", "distill_ema_decay", "distill_target")
                 if getattr(options, name) is not None}
    overrides["distill_seed"] = options.seed
    if options.init_from is None:
        vision = {"image_size": options.image_size} if options.image_size else {}
        config = PSDCLIPConfig.from_preset(options.preset, vision_config=vision, **overrides)
        model = PSDCLIPModel(config)
        processor = build_processor(config.vision_config.image_size, config.text_config.max_position_embeddings)
        return model, processor
    try:
        model_type = model_type_of(options.init_from)
        if model_type not in ("psdclip", "clip"):
            raise OptionError(f"--init-from: {options.init_from} holds a {model_type!r} model, not a PSD-CLIP or "
                              "CLIP one")
        note = pickle_weights_note(options.init_from)
        if note:
            logger.warning(note, main_process_only=True)
        config = PSDCLIPConfig.from_pretrained(options.init_from, **overrides)
        model = PSDCLIPModel.from_pretrained(options.init_from, config=config)
    except OptionError:
        raise
    except ModelFolderError as error:  # no config.json, or one that is not a JSON object
        raise OptionError(f"--init-from: {error}") from None
    except pickle.UnpicklingError:
        raise OptionError(f"--init-from: {refused_pickle(options.init_from)}") from None
    except (OSError, ValueError, StrictDataclassError, SafetensorError) as error:
        raise OptionError(f"--init-from: cannot load a model from {options.init_from}: {first_line(error)}")
    if options.image_size and options.image_size != config.vision_config.image_size:
        raise OptionError(f"--image-size: the model in {options.init_from} takes "
                          f"{config.vision_config.image_size} px images, got {options.image_size}")
    processor = processor_to_start_from(options.init_from, config)
    crop, size = processor.image_processor.crop_size, config.vision_config.image_size
    if (crop["height"], crop["width"]) != (size, size):
        raise OptionError(f"--init-from: the processor in {options.init_from} crops images to {crop['height']}x"
                          f"{crop['width']} px, its model takes {size}x{size} px: set its image processor's crop_size "
                          "(and size) to the model's")
    return model, processor


def processor_to_start_from(folder, config):
    """The processor saved in `folder`; CLIP's shipped tokenizer and image processing for a folder of bare weights
    (no processor file at all). OptionError naming the files when the folder has some that do not load: training
    with another tokenizer than the model's would go on without a word."""
    try:
        return AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError) as error:
        present = [name for name in PROCESSOR_FILES if (Path(folder) / name).exists()]
        if present:
            raise OptionError(f"--init-from: the processor in {folder} does not load from its "
                              f"{', '.join(present)}: {first_line(error)}") from None
    return build_processor(config.vision_config.image_size, config.text_config.max_position_embeddings)


def build_datasets(options, image_size: int):
    """Training and validation datasets and a description of the data for the model card."""
    def load(flag: str, source: str, split: str, **kwargs):
        if source == "synthetic":
            kwargs.update(num_samples=options.train_samples if flag == "--data" else options.val_samples,
                          image_size=image_size, world=options.synthetic_world)
            source = "synthetic:train" if flag == "--data" else "synthetic:val"
        try:
            return load_image_text_dataset(source, split=split, image_column=options.image_column,
                                           caption_column=options.caption_column, seed=options.seed,
                                           input_size=image_size, max_image_pixels=options.max_image_pixels, **kwargs)
        except DataError as error:
            raise OptionError(f"{flag}: {first_line(error)}") from error

    synthetic = options.data == "synthetic"
    noise = caption_noise(options)
    train = load("--data", options.data, "train", streaming=options.streaming, **(noise if synthetic else {}))
    # The built-in validation split is clean: it measures alignment, not how well the noise was fitted.
    val_source = options.val_data or ("synthetic" if synthetic else None)
    # A folder saved with several splits (`DatasetDict.save_to_disk`, e.g. --data and --val-data naming the same
    # folder) validates on its validation split; any other source is read whole, as its train split.
    val = load("--val-data", val_source, "validation" if saved_with_splits(val_source) else "train") \
        if val_source else None
    if val is not None and len(val) < 2:
        raise OptionError(f"--val-data: {val_source} has {len(val)} record; the validation loss needs at least 2")
    scenes = "built-in synthetic captioned scenes" + \
        (f" ({options.synthetic_world} world)" if options.synthetic_world != "standard" else "")
    description = {"training data": scenes if synthetic else options.data,
                   "training records": len(train) if not options.streaming else "streamed",
                   **(noise if synthetic else {}),
                   "validation data": "clean synthetic split" if val_source == "synthetic" else val_source or "none",
                   "validation records": len(val) if val is not None else 0}
    return train, val, description


def build_loaders(options, accelerator, processor, train_data, val_data):
    """The training and validation DataLoaders of each process (validation: None without data)."""
    # Each process reads micro-batches; one optimizer step takes `accum_steps` of them from every process.
    micro_batch = options.batch_size // (accelerator.num_processes * options.accum_steps)
    if micro_batch * accelerator.num_processes * options.accum_steps != options.batch_size or micro_batch == 0:
        raise OptionError(f"--batch-size {options.batch_size} must split evenly over {accelerator.num_processes} "
                          f"processes x {options.accum_steps} accumulation steps")
    if options.accum_steps > 1 and feature_caching_unsupported(accelerator):
        raise OptionError("--accum-steps: feature caching backpropagates several times per optimizer step and reads "
                          "the logit scale outside the model's forward, which FSDP and DeepSpeed do not allow; use "
                          "--accum-steps 1 there")
    # The sampler's order depends only on (seed, epoch), and augmentation is seeded per sample: a resumed run
    # skips the batches it has seen and then reads exactly what the uninterrupted run would have.
    train_loader = torch.utils.data.DataLoader(
        train_data, batch_size=micro_batch, drop_last=True, num_workers=options.num_workers,
        worker_init_fn=leave_interrupts_to_the_main_process,
        sampler=None if options.streaming else EpochSampler(len(train_data), seed=options.seed),
        collate_fn=ImageTextCollator(processor, train=True, seed=options.seed, uint8_pixels=True))
    val_loader = val_data and torch.utils.data.DataLoader(
        val_data, batch_size=micro_batch * options.accum_steps, num_workers=options.num_workers,
        worker_init_fn=leave_interrupts_to_the_main_process, collate_fn=ImageTextCollator(processor, train=False))
    return train_loader, val_loader
