"""NSFW detection with the real NudeNet ONNX detector on real photos: what it reports, the
channel order it is given, and how the per-label thresholds decide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
from nudenet import NudeDetector
from PIL import Image

from core.settings import NsfwSettings
from reference_index.nsfw import NsfwResult, detect

Pixels = npt.NDArray[np.uint8]
PHOTOS = ("astronaut", "coffee", "chelsea")
NO_THRESHOLDS = NsfwSettings(reject={}, review={})


def photo(name: str) -> Pixels:
    array: Pixels = getattr(skimage.data, name)()
    return array


def grey_as_rgb(array: Pixels) -> Pixels:
    stacked: Pixels = np.dstack([array] * 3)
    return stacked


def as_ours(found: list[dict[str, Any]]) -> list[tuple[str, float, list[int]]]:
    """NudeNet's own detections in the form `detect` reports them."""
    return [
        (d["class"], round(float(d["score"]), 4), [x, y, x + w, y + h])
        for d in found
        for x, y, w, h in [[int(v) for v in d["box"]]]
    ]


def triples(result: NsfwResult) -> list[tuple[str, float, list[int]]]:
    return [(label["label"], label["score"], label["box"]) for label in result.labels]


def face(result: NsfwResult) -> dict[str, Any]:
    """The astronaut's one FACE_FEMALE label (the label the threshold tests use)."""
    faces = [label for label in result.labels if label["label"] == "FACE_FEMALE"]
    assert len(faces) == 1, result.labels
    return faces[0]


@pytest.fixture(scope="module")
def nudenet() -> Any:
    return NudeDetector()


@pytest.mark.parametrize("name", PHOTOS)
def test_real_photos_are_approved(name: str) -> None:
    """Ordinary photos pass with the default thresholds: approved, nothing flagged."""
    result = detect(photo(name), NsfwSettings())
    assert result.decision == "approve"
    assert result.flagged == []
    body = result.to_dict()
    assert body["decision"] == "approve"
    assert body["flagged"] == []
    assert body["labels"] == result.labels
    assert "nudenet" in body["model"].lower()


def test_labels_carry_a_score_and_a_box_inside_the_image() -> None:
    """Each label has a NudeNet class name, a score in (0, 1] and a box [x0, y0, x1, y1] of
    ints with x0 < x1, y0 < y1, inside the image (checked on photos that do yield labels)."""
    seen = 0
    for name in (*PHOTOS, "camera"):
        array = photo(name)
        rgb = array if array.ndim == 3 else grey_as_rgb(array)
        height, width = rgb.shape[:2]
        for label in detect(rgb, NO_THRESHOLDS).labels:
            seen += 1
            assert set(label) == {"label", "score", "box"}
            assert isinstance(label["label"], str)
            assert label["label"].isupper()
            assert 0 < label["score"] <= 1
            x0, y0, x1, y1 = label["box"]
            assert all(isinstance(v, int) for v in label["box"])
            assert 0 <= x0 < x1 <= width, (name, label)
            assert 0 <= y0 < y1 <= height, (name, label)
    assert seen >= 2


def test_astronaut_face_is_found_where_the_face_is() -> None:
    """The astronaut photo yields a FACE_FEMALE label whose box lies around her face (upper
    middle of the photo), so the threshold tests below rest on a real detection."""
    label = face(detect(photo("astronaut"), NO_THRESHOLDS))
    x0, y0, x1, y1 = label["box"]
    assert label["score"] > 0.5
    assert 120 < (x0 + x1) / 2 < 320
    assert 40 < (y0 + y1) / 2 < 220


@pytest.mark.parametrize("name", PHOTOS)
def test_detector_is_given_bgr(name: str, nudenet: Any, tmp_path: Path) -> None:
    """`detect` on an RGB array reports exactly what NudeNet reports for the same image
    read from a file (OpenCV reads files as BGR)."""
    path = tmp_path / f"{name}.png"
    Image.fromarray(photo(name)).save(path)
    assert triples(detect(photo(name), NO_THRESHOLDS)) == as_ours(nudenet.detect(str(path)))


def test_channel_order_changes_what_nudenet_reports(nudenet: Any, tmp_path: Path) -> None:
    """NudeNet's output depends on channel order for these photos, so the BGR test above
    would catch RGB handed over unswapped."""
    differs = []
    for name in PHOTOS:
        path = tmp_path / f"{name}.png"
        Image.fromarray(photo(name)).save(path)
        from_file = as_ours(nudenet.detect(str(path)))
        unswapped = as_ours(nudenet.detect(np.ascontiguousarray(photo(name))))
        differs.append(from_file != unswapped)
    assert any(differs)


def test_review_threshold_sends_to_review() -> None:
    """A review threshold at or below a found label's score makes the decision "review" and
    flags that label with its threshold and level."""
    settings = NsfwSettings(reject={}, review={"FACE_FEMALE": 0.3})
    result = detect(photo("astronaut"), settings)
    assert result.decision == "review"
    assert result.flagged == [face(result) | {"level": "review", "threshold": 0.3}]


def test_reject_threshold_rejects() -> None:
    """A reject threshold at or below a found label's score makes the decision "reject"."""
    settings = NsfwSettings(reject={"FACE_FEMALE": 0.3}, review={})
    result = detect(photo("astronaut"), settings)
    assert result.decision == "reject"
    assert result.flagged == [face(result) | {"level": "reject", "threshold": 0.3}]


@pytest.mark.parametrize("level", ["review", "reject"])
def test_threshold_is_inclusive(level: str) -> None:
    """A label scoring exactly the threshold is flagged; 0.0001 above its score, not."""
    score = face(detect(photo("astronaut"), NO_THRESHOLDS))["score"]
    at = NsfwSettings(**{level: {"FACE_FEMALE": score}})
    above = NsfwSettings(**{level: {"FACE_FEMALE": round(score + 0.0001, 4)}})
    assert detect(photo("astronaut"), at).decision == level
    result = detect(photo("astronaut"), above)
    assert (result.decision, result.flagged) == ("approve", [])


def test_thresholds_for_absent_labels_change_nothing() -> None:
    """Low thresholds for labels the photo does not have leave it approved."""
    labels = {label["label"] for label in detect(photo("astronaut"), NO_THRESHOLDS).labels}
    absent = {"FEMALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "MALE_BREAST_EXPOSED"}
    assert not labels & absent
    settings = NsfwSettings(reject=dict.fromkeys(absent, 0.01), review=dict.fromkeys(absent, 0.01))
    result = detect(photo("astronaut"), settings)
    assert (result.decision, result.flagged) == ("approve", [])


def test_reject_wins_over_review_for_one_label() -> None:
    """A label over both its thresholds is flagged once, at level reject."""
    settings = NsfwSettings(reject={"FACE_FEMALE": 0.3}, review={"FACE_FEMALE": 0.3})
    result = detect(photo("astronaut"), settings)
    assert result.decision == "reject"
    assert [(f["label"], f["level"]) for f in result.flagged] == [("FACE_FEMALE", "reject")]


def test_reject_wins_over_review_across_labels() -> None:
    """With one label over a review threshold and another over a reject threshold, the
    decision is reject whichever of the two NudeNet lists first; both are flagged."""
    rgb = np.ascontiguousarray(np.vstack([photo("astronaut"), grey_as_rgb(photo("camera"))]))
    names = list(dict.fromkeys(label["label"] for label in detect(rgb, NO_THRESHOLDS).labels))
    assert len(names) >= 2, names
    first, second = names[:2]
    for review, reject in ((first, second), (second, first)):
        result = detect(rgb, NsfwSettings(review={review: 0.01}, reject={reject: 0.01}))
        assert result.decision == "reject"
        levels = {(f["label"], f["level"]) for f in result.flagged}
        assert (review, "review") in levels
        assert (reject, "reject") in levels
