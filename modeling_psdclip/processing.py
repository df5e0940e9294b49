"""The image-and-text processor: stock transformers classes only, so a saved one reloads without this package."""

from transformers import CLIPImageProcessorPil, CLIPProcessor, PreTrainedTokenizerBase
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from .tokenization import load_clip_tokenizer


def build_processor(
    image_size: int = 224, context_length: int = 77, tokenizer: PreTrainedTokenizerBase | None = None
) -> CLIPProcessor:
    """OpenAI CLIP's preprocessing at `image_size`, with `tokenizer` or the CLIP tokenizer.

    Images: any PIL mode becomes RGB (transparency over white), the shortest side is resized to
    `image_size` (bicubic), the centre `image_size` square is cropped, and pixels are rescaled to [0, 1]
    and normalised with CLIP's mean and std. The PIL backend is used because torchvision is not a
    dependency; `AutoProcessor.from_pretrained(folder)` picks it again wherever torchvision is missing,
    and `backend="pil"` pins it where torchvision is installed.
    """
    image_processor = CLIPImageProcessorPil(
        do_convert_rgb=True,
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer or load_clip_tokenizer(context_length))
