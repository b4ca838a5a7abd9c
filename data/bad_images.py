"""What happens to an image that cannot be decoded: ``data.on_bad_image`` is ``skip`` or ``fail``.

Real copies of ImageNet hold truncated and zero-byte files, and a run must not die at hour ten for one of them.
With ``skip`` (the default) the dataset hands out the next image in its place, and the file is listed once per
process in a tab-separated file in the run folder (``bad_images.tsv``: file, error); train.py and evaluate.py
report the count and the list at the end. With ``fail`` the first bad file stops the run with its name.

Files that decode but are unusual (CMYK or greyscale JPEGs, a PNG named .JPEG, palette or 16-bit PNGs) are not
bad: the transforms convert them to RGB.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from recipes.errors import UsageError

# What PIL raises for a file it cannot open or decode: unidentified or zero-byte (UnidentifiedImageError, an
# OSError), truncated ("image file is truncated"), broken chunks (SyntaxError, ValueError), decompression bombs.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# The run folder's list of skipped images.
BAD_IMAGE_LIST = "bad_images.tsv"
# Consecutive bad samples after which skipping stops and the data itself is reported as the problem.
MAX_CONSECUTIVE_BAD = 50


class ImageDecodeError(Exception):
    """An image file (or row) could not be decoded; raised by the decode steps, caught by the dataset."""


class BadImageError(UsageError):
    """``data.on_bad_image=fail`` met an undecodable image."""


def decode_image(load: Callable[[Any], Image.Image], sample: Any, transform: Callable | None) -> Any:
    """``transform(load(sample))``, or the decoded image without a transform; a failure to open or decode the
    file surfaces as ImageDecodeError, so a bad file is told apart from a bug in a transform."""
    try:
        image = load(sample)
        if transform is None:
            image.load()
            return image
    except DECODE_ERRORS as error:
        raise ImageDecodeError(str(error)) from error
    return transform(image)


class BadImageLog:
    """Applies ``data.on_bad_image`` and lists skipped images in ``path``, shared by all workers and ranks.

    Workers are separate processes, so the list is a file each one appends whole lines to (``O_APPEND`` keeps
    short lines from different processes apart); a process remembers what it already listed.
    """

    def __init__(self, path: str | Path | None, policy: str = "skip") -> None:
        self.path: Path | None
        if policy not in ("skip", "fail"):
            raise UsageError(f"data.on_bad_image={policy} is not one of: skip, fail.")
        if path is None and policy == "skip":  # nowhere given (evaluate.py, tests): a temporary file
            handle, path = tempfile.mkstemp(prefix="bad-images-", suffix=".tsv")
            os.close(handle)
        self.path = Path(path) if path is not None else None
        self.policy = policy
        self._listed: set[str] = set()

    def handle(self, description: str, error: BaseException) -> None:
        """Stop (``fail``) or list the image (``skip``); the caller then moves on to a replacement."""
        reason = " ".join(str(error).split()) or type(error).__name__
        if self.policy == "fail":
            raise BadImageError(
                f"Cannot decode {description}: {reason}. data.on_bad_image=fail stops at the first bad image; "
                "remove or replace the file, or set data.on_bad_image=skip to replace bad images with the next "
                "one and list them."
            )
        if description in self._listed:
            return
        self._listed.add(description)
        assert self.path is not None  # set for the skip policy
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(f"{description}\t{reason}\n")

    def entries(self) -> dict[str, str]:
        """Every listed image (over all processes and epochs) and its error."""
        if self.path is None or not self.path.is_file():
            return {}
        listed: dict[str, str] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            description, _, reason = line.partition("\t")
            if description:
                listed.setdefault(description, reason)
        return listed

    def report(self, limit: int = 10) -> str | None:
        """A few lines for the end of a run, or None when every image decoded."""
        listed = self.entries()
        if not listed:
            return None
        lines = [
            f"{len(listed)} image(s) could not be decoded and were replaced by the next image "
            f"(data.on_bad_image=skip); the full list is in {self.path}:"
        ]
        lines += [f"  {description}: {reason}" for description, reason in list(listed.items())[:limit]]
        if len(listed) > limit:
            lines.append(f"  ... and {len(listed) - limit} more")
        return "\n".join(lines)
