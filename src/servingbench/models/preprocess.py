"""Encoded-input payloads: what a client sends instead of a tensor, and the one function that turns it into one.

A zoo model's ``payload`` (docs/models.md) says what its requests carry:

* ``tensor`` (default): the model's input tensor itself (nested JSON lists, V2 tensors, raw bytes).
* ``image``: JPEG files, one per sample (base64 strings in JSON; raw bytes where the wire takes binary).  The
  server decodes and transforms each one (:func:`image_to_tensor`: PIL decode to RGB, resize the shorter side to
  ``resize``, centre crop ``crop`` x ``crop``, scale to [0, 1], normalise by the ImageNet mean and std) before the
  model: for image classifiers (``cnn``, ``resnet50``).
* ``text``: raw strings, one per sample, tokenised on the server with a ``tokenizers`` WordLevel tokenizer that
  servingbench trains on a seeded synthetic corpus and stores with the model's artifacts (``tokenizer.json``),
  padded / truncated to the model's sequence length: for the text encoders (``encoder``, ``bert_base``).

Every server script calls :class:`Preprocessor` in its framework's own pre-processing place, and the harness runs
the same :class:`Preprocessor` in-process on the same bytes for the expected outputs, so a server that preprocesses
differently fails verification.  Nothing is downloaded: images and texts are drawn from a seed.

Imported by every server, so it stays light: numpy, PIL and tokenizers, imported when first needed.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["PAYLOADS", "FAULT_ENV", "IMAGE_SIZE", "PayloadError", "Preprocessor", "build_tokenizer", "config_for",
           "example_payloads", "image_to_tensor", "load_preprocessor", "make_images", "make_texts",
           "payload_problem"]

PAYLOADS = ("tensor", "image", "text")
#: Side of the JPEG images in request pools and references: larger than the models' resolution, so resize and crop
#: do real work (ResNet at 224 px: resize to 256, crop 224, as torchvision's ImageNet evaluation transform).
IMAGE_SIZE = 256
JPEG_QUALITY = 90
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TOKENIZER_FILE = "tokenizer.json"
#: Test-only: a server whose environment sets this preprocesses *wrongly* (``resize``: nearest-neighbour to the crop
#: size without keeping the aspect ratio; ``normalize``: no mean/std normalisation), to prove verification catches
#: it.  Only :meth:`Preprocessor.for_server` reads it; references and expected outputs never do.
FAULT_ENV = "SERVINGBENCH_TEST_PREPROCESS_FAULT"
FAULTS = ("resize", "normalize")


class PayloadError(ValueError):
    """A request item that is not a valid payload (not base64, not a decodable image, not a string)."""


def payload_problem(payload: str, model: str, dtype: str, shape: tuple[int, ...]) -> str | None:
    """Why ``payload`` cannot feed a model whose input is ``dtype[shape]`` (None when it can)."""
    if payload not in PAYLOADS:
        return f"payload {payload!r} is not one of {', '.join(PAYLOADS)}"
    if payload == "image" and not (len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2]
                                   and dtype.startswith("float")):
        return (f"payload 'image' needs an image model (input float32[3, H, H]); model {model!r} takes "
                f"{dtype}{list(shape)}: use it with cnn or resnet50, or payload 'tensor'")
    if payload == "text" and not (len(shape) == 1 and dtype.startswith("int")):
        return (f"payload 'text' needs a token-id model (input int64[seq_len]); model {model!r} takes "
                f"{dtype}{list(shape)}: use it with encoder or bert_base, or payload 'tensor'")
    return None


def config_for(payload: str, dtype: str, shape: tuple[int, ...], high: float) -> dict[str, Any]:
    """The preprocessing recorded in the artifacts' ``meta.json`` for a model input ``dtype[shape]``."""
    if payload == "image":
        crop = int(shape[1])
        return {"kind": "image", "resize": int(round(crop * 256 / 224)), "crop": crop, "mean": list(MEAN),
                "std": list(STD), "image_size": IMAGE_SIZE, "jpeg_quality": JPEG_QUALITY}
    if payload == "text":
        return {"kind": "text", "tokenizer": TOKENIZER_FILE, "seq_len": int(shape[0]), "vocab_size": int(high)}
    return {"kind": "tensor"}


# ---- example payloads (request pools, references) -----------------------------------------------------------------
def make_images(n: int, seed: int, size: int = IMAGE_SIZE, quality: int = JPEG_QUALITY) -> list[bytes]:
    """``n`` distinct JPEG files of ``size`` x ``size`` RGB, deterministic in ``seed``: smooth colour gradients
    with a few random rectangles and noise (so JPEG has real work to do)."""
    from PIL import Image

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        a, b, c = rng.uniform(0, 255, 3), rng.uniform(-200, 200, 3), rng.uniform(-200, 200, 3)
        img = a + b * xx[..., None] + c * yy[..., None]
        for _ in range(6):
            x0, y0 = rng.integers(0, size - 8, 2)
            w, h = rng.integers(8, size // 2, 2)
            img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 12, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


_WORDS = ("the", "a", "model", "server", "fast", "slow", "request", "batch", "token", "image", "cat", "dog",
          "runs", "waits", "queue", "worker", "thread", "latency", "throughput", "cache", "answer", "good", "bad",
          "very", "not", "is", "was", "and", "or", "with")


def make_texts(n: int, seed: int, words: int | None = None) -> list[str]:
    """``n`` distinct sentences of synthetic words, deterministic in ``seed`` (some longer than a small encoder's
    sequence, so truncation matters; some shorter, so padding does)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        k = words or int(rng.integers(4, 48))
        vocab = list(_WORDS) + [f"w{j}" for j in range(400)]
        out.append(" ".join(vocab[int(j)] for j in rng.integers(0, len(vocab), k)) + ("." if i % 2 else "!"))
    return out


def example_payloads(payload: str, batch: int, seed: int) -> np.ndarray:
    """A batch of ``payload`` items as a numpy array: ``bytes_`` (``S``) of JPEG files for ``image``, ``str_``
    (``U``) for ``text`` (fixed-width arrays, so ``np.save`` / ``np.load`` need no pickle; JPEG ends with a marker
    and text is not NUL-terminated, so numpy's trailing-NUL stripping loses nothing)."""
    if payload == "image":
        return np.array(make_images(batch, seed), dtype=np.bytes_)
    if payload == "text":
        return np.array(make_texts(batch, seed), dtype=np.str_)
    raise ValueError(f"no example payloads for payload {payload!r}")


def build_tokenizer(vocab_size: int, path: str | os.PathLike[str]) -> None:
    """Train a WordLevel tokenizer (``[PAD]`` = 0, ``[UNK]`` = 1, lower-case, whitespace and punctuation split)
    on a seeded synthetic corpus with at most ``vocab_size`` ids, and save it as ``path`` (tokenizer.json)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"], min_frequency=1,
                                        show_progress=False)
    tok.train_from_iterator(make_texts(512, seed=4242), trainer=trainer)
    tok.save(str(path))


# ---- the preprocessing -----------------------------------------------------------------------------------------------
def _jpeg_bytes(item: Any) -> bytes:
    """One image item: raw JPEG bytes, or base64 text (str, or bytes that are not a JPEG)."""
    if isinstance(item, (bytes, bytearray, np.bytes_)) and bytes(item[:2]) == b"\xff\xd8":
        return bytes(item)
    if isinstance(item, (bytes, bytearray, np.bytes_, str, np.str_)):
        try:
            return base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as e:
            raise PayloadError(f"an image item is neither JPEG bytes nor base64: {e}") from e
    raise PayloadError(f"an image item must be a base64 string, got {type(item).__name__}")


def image_to_tensor(data: bytes, cfg: Mapping[str, Any], fault: str | None = None) -> np.ndarray:
    """One encoded image -> float32 ``(3, crop, crop)``: PIL decode to RGB, resize the shorter side to
    ``cfg["resize"]`` (bilinear), centre crop, scale to [0, 1], normalise by ``cfg["mean"]`` / ``cfg["std"]``
    (torchvision's ``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize`` on a PIL image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PayloadError(f"an image item is not a decodable image: {e}") from e
    crop, size = int(cfg["crop"]), int(cfg["resize"])
    if fault == "resize":  # the deliberate mistake: squash to the crop size, nearest neighbour
        img = img.resize((crop, crop), Image.Resampling.NEAREST)
    else:
        w, h = img.size
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    if fault != "normalize":
        x = (x - np.asarray(cfg["mean"], np.float32)[:, None, None]) / np.asarray(cfg["std"], np.float32)[:, None, None]
    return np.ascontiguousarray(x, dtype=np.float32)


class Preprocessor:
    """A model's payload -> input tensor batch.  ``pre(items)`` takes a sequence of items (one per sample) and
    returns the model's input batch as numpy (float32 images, int64 token ids); raises :class:`PayloadError` for a
    bad item."""

    def __init__(self, cfg: Mapping[str, Any], art_dir: str | os.PathLike[str], fault: str | None = None) -> None:
        self.cfg = dict(cfg)
        self.kind = self.cfg["kind"]
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"{FAULT_ENV}={fault!r}: use one of {', '.join(FAULTS)}")
        self.fault = fault
        self.tokenizer = None
        if self.kind == "text":
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(Path(art_dir) / self.cfg["tokenizer"]))
            n = int(self.cfg["seq_len"])
            self.tokenizer.enable_truncation(max_length=n)
            self.tokenizer.enable_padding(length=n, pad_id=0, pad_token="[PAD]")

    @classmethod
    def for_server(cls, cfg: Mapping[str, Any], art_dir: str | os.PathLike[str]) -> "Preprocessor":
        """The server's preprocessor (honours the test-only :data:`FAULT_ENV`)."""
        return cls(cfg, art_dir, fault=os.environ.get(FAULT_ENV) or None)

    def __call__(self, items: Iterable[Any]) -> np.ndarray:
        items = list(np.asarray(items, dtype=object).reshape(-1)) if isinstance(items, np.ndarray) else list(items)
        if not items:
            raise PayloadError("the request has no items")
        if self.kind == "image":
            return np.stack([image_to_tensor(_jpeg_bytes(it), self.cfg, self.fault) for it in items])
        if self.kind == "text":
            texts = []
            for it in items:
                if isinstance(it, (bytes, bytearray, np.bytes_)):
                    try:
                        it = bytes(it).decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise PayloadError(f"a text item is not UTF-8: {e}") from e
                if not isinstance(it, str):
                    raise PayloadError(f"a text item must be a string, got {type(it).__name__}")
                texts.append(str(it))
            return np.array([e.ids for e in self.tokenizer.encode_batch(texts)], dtype=np.int64)
        raise ValueError(f"no preprocessing for payload {self.kind!r}")


def load_preprocessor(art_dir: str | os.PathLike[str], meta: Mapping[str, Any] | None = None,
                      server: bool = True) -> Preprocessor | None:
    """The preprocessor of the model in ``art_dir`` (None for a tensor payload).  ``server``: honour
    :data:`FAULT_ENV` (the servers' call); the harness's expected outputs use ``server=False``."""
    if meta is None:
        import json

        meta = json.loads((Path(art_dir) / "meta.json").read_text())
    cfg = meta.get("preprocess") or {"kind": "tensor"}
    if cfg["kind"] == "tensor":
        return None
    return Preprocessor.for_server(cfg, art_dir) if server else Preprocessor(cfg, art_dir)
