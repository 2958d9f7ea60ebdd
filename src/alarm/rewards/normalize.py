"""z-normalisation of rewards, fitted on samples of the initial policy and stored with the run."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from alarm.errors import AlarmError


@dataclass(frozen=True)
class Normalizer:
    """(x − mean) / std with statistics of a reward under the initial policy."""

    mean: float
    std: float
    count: int

    @classmethod
    def fit(cls, values: Iterable[float | None], name: str = "reward") -> Normalizer:
        """Mean and sample std of ``values``. A reward (near-)constant on them is refused: dividing by a tiny
        std would turn every later difference into a z-score of thousands or millions."""
        xs = [float(v) for v in values if v is not None]
        if len(xs) < 2:
            raise AlarmError(
                f"cannot fit a normaliser for {name!r} on {len(xs)} values; sample at least 2 responses (more is better)"
            )
        if any(not math.isfinite(x) for x in xs):
            raise AlarmError(f"cannot fit a normaliser for {name!r}: the reward returned NaN or infinite values")
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        if std <= 1e-6 * max(1.0, abs(mean)):
            raise AlarmError(
                f"reward {name!r} is constant on the {len(xs)} fitting samples (value {mean:.6g}, std {std:.2g}), so "
                "it cannot be z-normalised; remove it from rewards.normalize or fit on more varied samples "
                "(more prompts or samples per prompt)")
        return cls(mean=mean, std=std, count=len(xs))

    def __call__(self, x: float | None) -> float | None:
        return None if x is None else (float(x) - self.mean) / self.std


def save_normalizers(path: str | os.PathLike, normalizers: dict[str, Normalizer], **extra) -> None:
    """Write ``{"normalizers": {name: {mean, std, count}}, **extra}`` atomically."""
    data = {"normalizers": {k: asdict(v) for k, v in normalizers.items()}, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def load_normalizers(path: str | os.PathLike) -> tuple[dict[str, Normalizer], dict]:
    """Inverse of :func:`save_normalizers`: ``(normalizers, extra)``."""
    try:
        data = json.loads(Path(path).read_text())
        norms = {k: Normalizer(float(v["mean"]), float(v["std"]), int(v["count"])) for k, v in data["normalizers"].items()}
        for k, n in norms.items():
            if not (math.isfinite(n.mean) and math.isfinite(n.std) and n.std > 0):
                raise ValueError(f"{k!r} needs a finite mean and a finite std > 0, got mean {n.mean}, std {n.std}")
    except FileNotFoundError:
        raise AlarmError(f"normalisation file {path} not found; fit it first (it is written by the sampling step)") from None
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as e:
        raise AlarmError(f"normalisation file {path} is malformed ({e}); delete it and fit again") from None
    extra = {k: v for k, v in data.items() if k != "normalizers"}
    return norms, extra
