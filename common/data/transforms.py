"""Image transforms (the torchvision.transforms.v2 recipe, made cheap) and a checked image loader.

The thesis' recipe: train = RandomResizedCrop (scale 0.6-1.0 for image-text pairs, 0.08-1.0
unimodal) + horizontal flip + ImageNet mean/std; eval = resize + normalise.

The transforms stop at uint8 ``[3, H, W]``: data-loader workers crop, resize and flip, and
:func:`to_model_input` does the float conversion and mean/std normalisation where the batch
meets the model (``fit`` after moving a batch to the device, and every evaluation path). A
uint8 batch is a quarter of the bytes through the worker queues and the host-to-device copy
(154 MB -> 38 MB per batch of 256 at 224 px), and the normalisation runs on the GPU instead
of a worker's core. The arithmetic is the one the transforms did per image before, so results
on CPU are bit-identical.

:class:`ImageTransform` *reports* whether it flipped: :class:`common.data.datasets.ImageTextPairs`
then mirrors "left"/"right" in the caption (:func:`common.data.synthetic.mirror_caption`),
so flipped pairs stay true and ``data.hflip`` can keep the thesis' 0.5 for image-text
training too. Image-only datasets ignore the flag. All randomness comes from the torch
global RNG, which :class:`common.data.datasets.TrainStream` seeds per item.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from common.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = Union[np.ndarray, PIL.Image.Image, torch.Tensor]

# the batch entries that hold images for a model: "image" [B, 3, H, W] everywhere, "views"
# [B, V, 3, H, W] of the two-view teachers (common.models.tiny_dino)
IMAGE_KEYS = ("image", "views")

# mean/std in uint8 units, 3x1x1, float32: x.float().sub_(mean).div_(std) is the arithmetic
# the transforms always did, now once per batch (bit-identical on CPU)
_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_STD_255 = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
_STATS: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[..., 3, H, W]`` (what the transforms give) -> float32 normalised with
    ImageNet mean/std, on their own device; float images (already model inputs, e.g. timm's
    fine-tuning augmentation) come back unchanged, so callers need not know which they got."""
    if images.dtype != torch.uint8:
        return images
    if images.device not in _STATS:
        _STATS[images.device] = (_MEAN_255.to(images.device), _STD_255.to(images.device))
    mean, std = _STATS[images.device]
    return images.float().sub_(mean).div_(std)


def to_uint8_chw(image: ImageLike) -> torch.Tensor:
    """uint8 HxWx3 numpy, PIL or uint8 CxHxW tensor -> uint8 ``[3, H, W]`` tensor (no copy
    for numpy; ~20x cheaper than ``v2.ToImage`` on small arrays, which matters at 32 px)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(f"expected a uint8 HxWx3 array, got {image.dtype} {image.shape}")
        return torch.from_numpy(image).permute(2, 0, 1)
    if isinstance(image, PIL.Image.Image):
        return F.pil_to_tensor(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise TypeError(f"expected a uint8 3xHxW tensor, got {image.dtype} "
                            f"{tuple(image.shape)}")
        return image
    raise TypeError(f"unsupported image type {type(image).__name__}")


def random_crop_box(height: int, width: int, scale: Sequence[float],
                    ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: the algorithm and distribution of
    ``v2.RandomResizedCrop.make_params`` (10 tries, then a central crop), with one
    ``torch.rand(4)`` per try instead of four scalar tensor ops: 3 us instead of 35 us, which
    is a tenth of a sample's budget at 32 px."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u_area, u_ratio, u_top, u_left = torch.rand(4).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return (min(int(u_top * (height - h + 1)), height - h),
                    min(int(u_left * (width - w + 1)), width - w), h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 [3, h, w] -> uint8 [3, *size], bilinear with antialiasing: exactly the native
    uint8 kernel that ``v2.functional.resize`` runs on CPU, without its 20-us wrapper."""
    return torch.nn.functional.interpolate(x[None], size=list(size), mode="bilinear",
                                           antialias=True, align_corners=False)[0]


class ImageTransform:
    """uint8 image -> (random resized crop with ``crop_scale`` | resize) to ``image_size`` ->
    optional horizontal flip (probability ``hflip``) -> uint8 ``[3, H, W]``; normalising is
    :func:`to_model_input`'s, where the batch meets the model. ``apply`` also returns whether
    it flipped; calling it drops that.

    The same operations as ``v2.Compose([RandomResizedCrop, RandomHorizontalFlip])`` on uint8
    (same crop distribution, same resize kernel), written out because v2's
    per-transform dispatch costs ~50 us a call, more than the kernels themselves on 32-px
    images, and the synthetic stream must exceed 2k samples/s on one core.
    """

    def __init__(self, image_size: int, crop_scale: Optional[Sequence[float]] = None,
                 hflip: float = 0.0) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability, got {hflip}")
        if crop_scale is not None and not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (min, max) within (0, 1], got {crop_scale}")
        self.size = [image_size, image_size]
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else None
        self.hflip = hflip

    def apply(self, image: ImageLike) -> Tuple[torch.Tensor, bool]:
        x = to_uint8_chw(image)
        if self.crop_scale is not None:
            top, left, h, w = random_crop_box(x.shape[-2], x.shape[-1], self.crop_scale)
            x = _resize(x[:, top:top + h, left:left + w], self.size)
        elif list(x.shape[-2:]) != self.size:
            x = _resize(x, self.size)
        flipped = self.hflip > 0 and bool(torch.rand(()) < self.hflip)
        if flipped:
            x = F.horizontal_flip(x)
        return x, flipped

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return self.apply(image)[0]

    def __repr__(self) -> str:
        return (f"ImageTransform(size={self.size}, crop_scale={self.crop_scale}, "
                f"hflip={self.hflip})")


def train_transform(image_size: int, crop_scale: Sequence[float] = (0.6, 1.0),
                    hflip: float = 0.5) -> ImageTransform:
    """RandomResizedCrop(image_size, crop_scale) + flip(p=hflip), uint8 out (normalise with
    :func:`to_model_input`)."""
    return ImageTransform(image_size, crop_scale, hflip)


def eval_transform(image_size: int) -> ImageTransform:
    """Resize to image_size x image_size (the thesis' eval), uint8 out (normalise with
    :func:`to_model_input`)."""
    return ImageTransform(image_size)


def load_image(path: Union[str, Path], draft: Optional[int] = None,
               span: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """uint8 RGB ``[3, H, W]``, fully decoded now so that a missing, truncated or corrupt file
    fails here with one :class:`DataError` naming it, not later inside a transform.

    Decoded by ``torchvision.io.decode_image`` (libjpeg-turbo/libpng straight into a tensor:
    the same pixels as PIL, without PIL's ``convert("RGB")`` and PIL->tensor copies; with
    the uint8 transforms 1.3-1.5x the samples per core of the PIL path, ``make bench``); whatever
    it refuses (BMP, TIFF, 16-bit PNG, or damage) goes to PIL, which decodes the other
    formats and names the damage in the same words as always.

    ``draft``: let a JPEG decode at a reduced scale no smaller than ``draft`` pixels a side
    (PIL's ``Image.draft``): every byte is still read and entropy-decoded, so a damaged file
    still fails, at a fraction of the cost; what the pre-flight check of evaluation sets uses.
    ``span``: (byte offset, size) of the image inside ``path``, a webdataset tar shard.
    """
    path = Path(path)
    where = f"{path} (bytes {span[0]}-{span[0] + span[1]})" if span else str(path)
    try:
        data = _read_bytes(path, span)
        if draft is None:
            decoded = _decode_torchvision(data)
            if decoded is not None:
                return decoded
        with PIL.Image.open(io.BytesIO(data)) as image:
            if draft is not None:
                image.draft("RGB", (draft, draft))
            return F.pil_to_tensor(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist; check data.root and that the dataset "
                        f"was extracted completely") from None
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {where} ({type(err).__name__}: {err}); the file is "
                        f"corrupt or not an image: re-download it or remove it from the "
                        f"dataset's annotation file") from None


def _read_bytes(path: Path, span: Optional[Tuple[int, int]]) -> bytearray:
    """The file's bytes, or ``span``'s; a bytearray, because ``torch.frombuffer`` wants a
    writable buffer."""
    with path.open("rb") as f:
        if span is None:
            return bytearray(f.read())
        f.seek(span[0])
        data = bytearray(f.read(span[1]))
    if len(data) != span[1]:
        raise OSError(f"the shard ends after {len(data)} of {span[1]} bytes")
    return data


def _decode_torchvision(data: bytearray) -> Optional[torch.Tensor]:
    """uint8 ``[3, H, W]`` from torchvision's decoders, or None where they refuse the bytes
    (a format they lack, a damaged file) or give more than 8 bits (16-bit PNG): PIL decides
    those, as before."""
    try:
        image = decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):  # ValueError: torch.frombuffer of an empty file
        return None
    return image if image.dtype == torch.uint8 else None
