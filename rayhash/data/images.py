"""`LabeledImages`: the one in-memory form every data source returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabeledImages:
    """uint8 images ``(n, H, W, C)`` (C=1 for grayscale), optional labels and stable ids.

    ``labels`` is ``(n,)`` int class ids or ``(n, C)`` multi-hot; ``ids`` default to the
    position as a string, so a code set written from these images names each row.
    ``classes`` names the label ids; ``skipped`` lists what the source could not read, as
    ``(uri or id, reason)``, so nothing is dropped silently.
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    ids: list[str] | None = None
    name: str = "images"
    classes: tuple[str, ...] | None = None
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        im = self.images
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be a uint8 array of shape (n, H, W, C), got "
                f"{getattr(im, 'dtype', type(im))} {getattr(im, 'shape', '')}; add a channel "
                "axis for grayscale (images[..., None])."
            )
        n = len(im)
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {n} images.")
        if self.ids is None:
            object.__setattr__(self, "ids", [str(i) for i in range(n)])
        elif len(self.ids) != n:
            raise ValueError(f"{self.name}: {len(self.ids)} ids for {n} images.")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, idx) -> LabeledImages:
        """The images at positions ``idx`` (ids and labels follow them)."""
        idx = np.asarray(idx, dtype=np.int64)
        return LabeledImages(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            ids=[self.ids[i] for i in idx],
            name=self.name,
            classes=self.classes,
            skipped=self.skipped,
        )
