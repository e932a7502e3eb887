"""NSFW detection with NudeNet: its ONNX detector ships inside the PyPI wheel, so it is a real
check offline. Per-label thresholds come from settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.settings import NsfwSettings

MODEL = "nudenet 3 (320n ONNX)"

_detector: Any = None
_lock = threading.Lock()


def _get_detector() -> Any:
    global _detector
    with _lock:
        if _detector is None:
            from nudenet import NudeDetector

            _detector = NudeDetector()
        return _detector


@dataclass(frozen=True)
class NsfwResult:
    decision: str  # "approve" | "review" | "reject"
    labels: list[dict[str, Any]] = field(default_factory=list)
    flagged: list[dict[str, Any]] = field(default_factory=list)
    model: str = MODEL

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "labels": self.labels,
            "flagged": self.flagged,
            "model": self.model,
        }


def detect(rgb: np.ndarray, settings: NsfwSettings) -> NsfwResult:
    """Labels NudeNet finds in an RGB image, and the decision its thresholds give."""
    # NudeNet reads arrays the way OpenCV loads files: blue, green, red.
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    found = _get_detector().detect(bgr)
    labels = [
        {"label": d["class"], "score": round(float(d["score"]), 4), "box": _box(d["box"])}
        for d in found
    ]
    flagged = []
    decision = "approve"
    for label in labels:
        for level, thresholds in (("reject", settings.reject), ("review", settings.review)):
            threshold = thresholds.get(label["label"])
            if threshold is not None and label["score"] >= threshold:
                flagged.append(label | {"level": level, "threshold": threshold})
                if level == "reject" or decision == "approve":
                    decision = "reject" if level == "reject" else "review"
                break
    return NsfwResult(decision, labels, flagged)


def _box(xywh: list[int]) -> list[int]:
    x, y, w, h = (int(v) for v in xywh)
    return [x, y, x + w, y + h]
