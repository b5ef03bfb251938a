"""Unit tests of medlite.serve.summary and the multipart reader (no model, no server)."""

from __future__ import annotations

import asyncio

import pytest

from medlite.serve.multipart import UploadError, read_form
from medlite.serve.summary import abnormal_probability, abnormal_rule, one_line

BINARY = {"classes": ["normal", "pneumonia"], "threshold": 0.4}
THREE = {"classes": ["bacterial", "normal", "viral"]}


def test_binary_reading_uses_the_threshold() -> None:
    flagged = {"predicted": "pneumonia", "probabilities": {"normal": 0.55, "pneumonia": 0.45}, "threshold": 0.4,
               "status": "ok"}
    assert one_line(flagged, BINARY) == "Model flags pneumonia: probability 0.45 is at or above its threshold 0.40."
    calm = {**flagged, "predicted": "normal", "probabilities": {"normal": 0.7, "pneumonia": 0.3}}
    assert one_line(calm, BINARY).startswith("No pneumonia flagged: probability 0.30 is below")
    assert abnormal_probability(flagged["probabilities"], BINARY) == 0.45


def test_multiclass_reading_and_row_status() -> None:
    item = {"predicted": "viral", "probabilities": {"bacterial": 0.3, "normal": 0.1, "viral": 0.6}, "status": "ok"}
    assert one_line(item, THREE) == "Most likely viral (0.60), then bacterial (0.30)."
    assert abnormal_rule(THREE)[2] == "1 - probability of normal"
    assert abnormal_probability(item["probabilities"], THREE) == pytest.approx(0.9)
    # A status other than ok (a later trust check) is shown as the row says, never replaced.
    assert one_line({**item, "status": "flagged"}, THREE).startswith("[flagged] Most likely viral")
    assert abnormal_rule({"classes": ["a", "b", "c"]})[1] is None


def _read(body: bytes, **limits: int) -> object:
    async def chunks():  # the body in three pieces, as a network delivers it
        for i in range(0, len(body), max(1, len(body) // 3)):
            yield body[i:i + max(1, len(body) // 3)]

    return asyncio.run(read_form("multipart/form-data; boundary=xx", chunks(), max_bytes=limits.get("max_bytes", 10**6),
                                 max_files=limits.get("max_files", 4)))


def _part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--xx\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def test_multipart_in_memory_without_file_names() -> None:
    body = _part("files", b"\x89PNG-one", "Doe_Janet.png") + _part("files", b"two", "x") + \
        _part("heatmap", b"true") + b"--xx--\r\n"
    form = _read(body)
    assert form.files == [b"\x89PNG-one", b"two"] and form.fields == {"heatmap": "true"}
    assert "Doe" not in repr(form.__dict__)  # the file name is not kept anywhere
    with pytest.raises(UploadError, match="more than 1 files") as err:
        _read(body, max_files=1)
    assert err.value.status == 413
    with pytest.raises(UploadError, match="MB limit") as err:
        _read(body, max_bytes=20)
    assert err.value.status == 413
    with pytest.raises(UploadError, match="longer than 1024 bytes"):
        _read(_part("heatmap", b"x" * 2000) + b"--xx--\r\n")
    with pytest.raises(UploadError, match="multipart/form-data") as err:
        asyncio.run(read_form("application/json", iter([]), max_bytes=1, max_files=1))  # type: ignore[arg-type]
    assert err.value.status == 415
