"""Writes small uncompressed DICOM files (with patient identifiers) for the DICOM, source and predict tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PATIENT_NAME = "Doe^Janet"
PATIENT_ID = "PID-0987654"
SECRETS = ("Doe", "Janet", PATIENT_ID, "19700101")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | tuple[list[float], list[float]] | None = None,
    voi_lut: tuple[int, int, np.ndarray] | None = None,
    frames: int | None = None,
) -> Path:
    """Write an uncompressed DICOM (explicit VR little endian) that carries patient identifiers.

    ``pixels`` of a signed dtype (int16) set PixelRepresentation 1. ``window`` is (center, width), either
    numbers or lists of alternatives; ``voi_lut`` is (first mapped value, bits per entry, LUT data) for a
    one-item VOI LUT Sequence.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if photometric == "RGB" else pixels.shape[-2:]
    alloc = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = alloc, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, bits, data = voi_lut
        item = Dataset()
        item.add_new(0x00283002, "US", [len(data), first, bits])  # LUT Descriptor
        item.add_new(0x00283006, "US", [int(v) for v in data])  # LUT Data (US, not the ambiguous OW)
        ds.VOILUTSequence = [item]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
