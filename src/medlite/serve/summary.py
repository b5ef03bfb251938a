"""What the server says about a model and a result in words: the model panel and the one-line reading.

Everything here is derived from the model's contract (classes, threshold, the card summary embedded by
``medlite export``) and from the prediction rows of :func:`medlite.deploy.prediction.predict_arrays`; nothing
is invented. Fields the rows carry beyond probabilities (``status``, ``warnings``, out-of-distribution scores,
calibrated probabilities) are passed through as they are.
"""

from __future__ import annotations

from typing import Any

from medlite._version import __version__
from medlite.deploy.cam import cam_unavailable

NORMAL_NAMES = ("normal", "no finding", "no_finding", "healthy")
NOT_A_DEVICE = "Not a diagnostic device; a clinician decides."


def abnormal_rule(contract: dict[str, Any]) -> tuple[str, int | None, str]:
    """How the worklist's "probability of abnormality" is read off the probabilities.

    Returns:
        ``(kind, class index, words)``: ``("positive", i, ...)`` for a binary model (the positive class),
        ``("not-normal", i, ...)`` when a class is called normal (1 - its probability), else
        ``("none", None, ...)``.
    """
    classes = [str(c) for c in contract["classes"]]
    if len(classes) == 2:
        return "positive", 1, f"probability of {classes[1]} (the positive class)"
    for i, name in enumerate(classes):
        if name.lower() in NORMAL_NAMES:
            return "not-normal", i, f"1 - probability of {name}"
    return "none", None, "no class is called normal: the worklist sorts by the top probability"


def abnormal_probability(probs: dict[str, float], contract: dict[str, Any]) -> float | None:
    kind, index, _ = abnormal_rule(contract)
    if index is None:
        return None
    p = probs[str(contract["classes"][index])]
    return round(p if kind == "positive" else 1.0 - p, 6)


def one_line(item: dict[str, Any], contract: dict[str, Any]) -> str:
    """The plain-language reading of one result (probabilities, threshold and the row's own status)."""
    probs: dict[str, float] = item["probabilities"]
    classes = [str(c) for c in contract["classes"]]
    if len(classes) == 2:
        positive, p, t = classes[1], probs[classes[1]], item.get("threshold")
        if item["predicted"] == positive:
            text = f"Model flags {positive}: probability {p:.2f} is at or above its threshold {t:.2f}."
        else:
            text = f"No {positive} flagged: probability {p:.2f} is below the model's threshold {t:.2f}."
    else:
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])
        text = f"Most likely {ranked[0][0]} ({ranked[0][1]:.2f})"
        text += f", then {ranked[1][0]} ({ranked[1][1]:.2f})." if len(ranked) > 1 else "."
    status = str(item.get("status", ""))
    if status and status != "ok":
        text = f"[{status}] {text} Read the warnings before using this result."
    return text


def model_info(contract: dict[str, Any], settings: Any) -> dict[str, Any]:
    """``GET /api/v1/model``: the contract (without the CAM weights) and the model card summary."""
    cam = contract.get("cam") or {}
    _, _, rule = abnormal_rule(contract)
    return {
        "model": contract["model"], "classes": list(contract["classes"]),
        "threshold": contract.get("threshold"), "threshold_rule": contract.get("threshold_rule"),
        "positive_class": contract.get("positive_class"), "input_size": contract["input_size"],
        "precision": contract.get("precision"), "preprocess": contract.get("preprocess"),
        "heatmap": {"available": cam_unavailable(contract) is None, "layer": cam.get("layer"),
                    "method": cam.get("method"), "reason": cam_unavailable(contract)},
        "abnormal_rule": rule,
        "card": contract.get("card"), "not_a_device": NOT_A_DEVICE,
        "limits": {"max_upload_mb": settings.max_upload_mb, "max_megapixels": settings.max_pixels / 1e6,
                   "max_files": settings.max_files},
        "exported_with": contract.get("medlite_version"), "server_version": __version__,
    }
