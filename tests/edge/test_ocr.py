"""The OCR pipeline's steps on PP-OCR's trained models and rendered pages."""

from __future__ import annotations

import numpy as np
import pytest

from edge.lab._ocr import (
    char_error_rate,
    characters,
    detect_lines,
    detector_input,
    ort_infer,
    read_page,
    recognizer_width,
    render_page,
)


def test_detected_boxes_follow_the_probability_map() -> None:
    prob = np.zeros((1, 1, 64, 96), np.float32)
    prob[0, 0, 10:16, 20:60] = 0.9  # a shrunk line: 6 rows, 40 columns
    prob[0, 0, 40:44, 8:30] = 0.2  # below the threshold: not text
    boxes = detect_lines(prob)
    grow = round(6 * 40 * 1.5 / (2 * 46))
    assert boxes == [(10 - grow, 16 + grow, 20 - grow, 60 + grow)]
    with pytest.raises(ValueError, match="multiples of 32"):
        detector_input(np.zeros((50, 64, 3), np.uint8))
    assert recognizer_width(np.zeros((24, 40, 3), np.uint8)) == 160
    assert recognizer_width(np.zeros((24, 400, 3), np.uint8)) == 800


def test_pages_are_read_like_the_rendered_text(trained_model) -> None:
    paths = {k: trained_model(f"ppocr_{k}") for k in ("det", "cls", "rec")}
    chars = characters(paths["rec"])
    infer = ort_infer(paths)
    rgb, truth = render_page(320, 320, seed=1)
    assert rgb.shape == (320, 320, 3) and len(truth) >= 3
    lines = read_page(rgb, infer, {k: k for k in paths}, chars)
    read = "\n".join(x["text"] for x in lines)
    assert len(lines) == len(truth)
    # Rendered words, read by the trained models: a few characters may differ (spaces).
    assert char_error_rate("\n".join(truth), read) < 0.1
    assert char_error_rate("abc", "abc") == 0.0 and char_error_rate("abcd", "abd") == 0.25


def test_demo_ocr_names_a_bad_page_size(capsys) -> None:
    from edge.cli import main

    assert main(["demo", "ocr", "--sizes", "300x320"]) != 0
    assert "multiples of 32" in capsys.readouterr().err
