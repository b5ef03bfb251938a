"""The server's inference engine: one ONNX model, a fixed pool of worker threads, and a bounded admission.

A request is admitted only while fewer than ``queue`` requests are running or waiting and the request bodies
held in memory stay under ``inflight_mb``; otherwise it is answered 503 at once, so a burst of uploads can
never grow memory without bound. An admitted request's files are decoded (:mod:`medlite.serve.intake`),
preprocessed under the model's contract and scored in one batch by
:func:`medlite.deploy.prediction.predict_arrays` (the function behind ``medlite predict``), with the class
activation map of the predicted class when asked for (:mod:`medlite.deploy.cam`). Decoding, OpenCV and ONNX
Runtime release the GIL, so the worker threads run in parallel; no torch is imported.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlite.data.display import to_original_geometry, window
from medlite.data.input_checks import check_image, checked_from_bytes, tiny_below
from medlite.data.preprocess import PreprocessConfig, preprocess_image
from medlite.deploy.cam import cam_unavailable
from medlite.deploy.classifiers import OnnxClassifier
from medlite.deploy.prediction import operating_threshold, predict_arrays
from medlite.errors import DataError
from medlite.serve.intake import SUFFIX, decode_upload
from medlite.serve.multipart import UploadError
from medlite.serve.settings import ServeSettings
from medlite.serve.summary import abnormal_probability, one_line
from medlite.utils.atomic import atomic_write

DISPLAY_SIDE = 512  # longest side of the display PNG and heatmap: enough for a 1366 x 768 screen, small to send


@dataclass
class Outcome:
    """A processed request: one item per file (in upload order) and what the log line needs."""

    items: list[dict[str, Any]] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [item for item in self.items if item["status"] == "error"]


def png_base64(image: np.ndarray) -> str:
    """uint8 (H, W), (H, W, 3) BGR or (H, W, 4) BGRA -> base64 PNG text (fast compression level)."""
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def display_image(original: np.ndarray) -> np.ndarray:
    """The X-ray as read, for a screen: uint8 (h, w), longest side <= 512, percentile-windowed.

    Downscaled before windowing: percentiles of a 40-megapixel image would cost seconds and look the same.
    """
    h, w = original.shape
    scale = min(1.0, DISPLAY_SIDE / max(h, w))
    small = original if scale == 1.0 else cv2.resize(
        original, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.round(window(small) * 255.0).astype(np.uint8)


def heatmap_layer(cam: np.ndarray, shape: tuple[int, int], resize: str) -> np.ndarray:
    """BGRA uint8 (h, w, 4) overlay of a (S, S) map in [0, 1]: jet colours, alpha = the map (transparent where
    the model found no evidence), on the display image's geometry."""
    sal = np.clip(to_original_geometry(cam, shape, resize), 0.0, 1.0)
    u8 = np.round(sal * 255.0).astype(np.uint8)
    return np.dstack([cv2.applyColorMap(u8, cv2.COLORMAP_JET), u8])


class Engine:
    """The loaded model and the worker pool of one server."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.classifier = OnnxClassifier(settings.model, threads=settings.inference_threads)
        self.contract = self.classifier.contract
        self.cfg = PreprocessConfig.from_stored(self.contract["preprocess"])
        self.threshold = operating_threshold(self.contract, settings.model.name)
        self.cam_reason = cam_unavailable(self.contract)
        classes = [str(c) for c in self.contract["classes"]]
        # A binary model's map shows the positive class (where the evidence for the finding is, whether or not it
        # reaches the threshold); a multi-class model's map shows the predicted class.
        self.cam_class = 1 if len(classes) == 2 else None
        self.pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="medlite-serve")
        self._lock = threading.Lock()
        self._pending = 0
        self._inflight = 0
        self.warm_up()

    # ------------------------------------------------------------------------------------------ admission
    def admit(self) -> bool:
        """Take a request slot; ``False`` (answer 503) when ``queue`` requests are already admitted."""
        with self._lock:
            if self._pending >= self.settings.queue:
                return False
            self._pending += 1
            return True

    def release(self, n_bytes: int = 0) -> None:
        """Give back a request slot and the body bytes it held."""
        with self._lock:
            self._pending -= 1
            self._inflight -= n_bytes

    def reserve_bytes(self, n: int) -> None:
        """Count ``n`` more body bytes in memory; :class:`UploadError` 503 past the in-flight budget."""
        with self._lock:
            if self._inflight + n > self.settings.inflight_mb * 1e6:
                raise UploadError(503, "server busy: too many uploads in memory; try again in a moment")
            self._inflight += n

    @property
    def pending(self) -> int:
        return self._pending

    # ----------------------------------------------------------------------------------------- inference
    def warm_up(self) -> None:
        """One inference on a blank image, so the first request does not pay ONNX Runtime's lazy set-up."""
        size = int(self.contract["input_size"])
        predict_arrays(self.classifier, np.zeros((1, size, size), np.uint8), self.threshold,
                       cam=self.cam_reason is None)

    def submit(self, files: list[bytes], *, heatmap: bool, display: bool, request_id: str) -> Future[Outcome]:
        return self.pool.submit(self.process, files, heatmap=heatmap, display=display, request_id=request_id)

    def process(self, files: list[bytes], *, heatmap: bool, display: bool, request_id: str) -> Outcome:
        """Decode, score and draw one request's files (runs in a worker thread)."""
        outcome = Outcome()
        good: list[tuple[int, np.ndarray, np.ndarray | None]] = []  # (position, u8 input, display image)
        for i, data in enumerate(files):
            label = f"image {i + 1}"
            try:
                original, fmt = decode_upload(data, label, max_pixels=self.settings.max_pixels,
                                              dicom_window=self.cfg.dicom_window)
                self._keep(data, fmt, request_id, i)
                checked = checked_from_bytes(np.frombuffer(data, np.uint8), Path(label),
                                             dicom_window=self.cfg.dicom_window)  # as the model's input
                reason = check_image(checked, min_side=tiny_below(self.cfg.size))
                if reason is not None:  # not sent to the model: a colour photo, a blank or tiny image ...
                    outcome.items.append({"image": i + 1, "status": "error", "error": f"{label}: rejected: {reason}",
                                          "code": 422})
                    continue
                u8 = preprocess_image(original, self.cfg)
                shown = display_image(original) if display or heatmap else None
                del original  # the full-size float image is the largest object; drop it before the next
                good.append((i, u8, shown))
                outcome.items.append({"image": i + 1, "status": "pending"})
            except UploadError as err:
                outcome.items.append({"image": i + 1, "status": "error", "error": str(err), "code": err.status})
            except DataError as err:  # preprocessing refused the decoded image
                outcome.items.append({"image": i + 1, "status": "error", "error": f"{label}: {err}", "code": 400})
        if good:
            rows = predict_arrays(self.classifier, np.stack([u8 for _, u8, _ in good]), self.threshold,
                                  cam=heatmap and self.cam_reason is None, cam_class=self.cam_class)
            for (i, _, shown), row in zip(good, rows, strict=True):
                outcome.items[i] = self._item(i, row, shown, heatmap=heatmap, display=display)
                outcome.predicted.append(str(row["predicted"]))
        return outcome

    def _item(self, i: int, row: dict[str, Any], shown: np.ndarray | None, *, heatmap: bool,
              display: bool) -> dict[str, Any]:
        classes = [str(c) for c in self.contract["classes"]]
        cam = row.pop("cam", None)
        probs = {c: row.pop(f"prob_{c}") for c in classes}
        # Every other field of the row (status, threshold, warnings, scores added by later medlite versions)
        # passes through untouched.
        item: dict[str, Any] = {"image": i + 1, **row, "probabilities": probs}
        item["abnormal_probability"] = abnormal_probability(probs, self.contract)
        item["summary"] = one_line(item, self.contract)
        if display and shown is not None:
            item["display_png"] = png_base64(shown)
        if heatmap:
            if cam is None:
                item["heatmap_png"], item["heatmap_note"] = None, self.cam_reason
            else:
                explained = classes[self.cam_class] if self.cam_class is not None else row["predicted"]
                item["heatmap_png"] = png_base64(heatmap_layer(cam, shown.shape, self.cfg.resize))
                item["heatmap_class"] = explained
                layer = self.contract["cam"]["layer"]
                item["heatmap_note"] = (
                    f"class activation map of {explained} at layer {layer}: where the model found evidence for "
                    "it (not a lesion outline)" if cam.max() > 0 else
                    f"no positive evidence for {explained} anywhere in the image (layer {layer}): the map is empty")
        return item

    def _keep(self, data: bytes, fmt: str, request_id: str, index: int) -> None:
        """With ``--keep-uploads``, write the bytes as ``<request id>-<n><suffix>`` (never the file's name)."""
        folder = self.settings.keep_uploads
        if folder is not None:
            with atomic_write(folder / f"{request_id}-{index + 1}{SUFFIX[fmt]}", "wb") as handle:
                handle.write(data)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
