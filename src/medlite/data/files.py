"""The one walk over image files, shared by every folder reader, ``predict`` and ``explain``.

Rules, the same everywhere: a folder is searched recursively (unless told otherwise) in sorted order; hidden
files and everything under hidden folders (names starting with ``.``, e.g. ``.thumbs/``, ``.DS_Store``) are
skipped; a file counts as an image when it has an image suffix or the DICOM ``DICM`` magic under any name
(:func:`medlite.data.imageio.is_image_path`). A file named explicitly is always kept, so that a non-image
given by name is reported as unreadable rather than silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medlite.data.imageio import is_image_path
from medlite.errors import DataError


def walk_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted, hidden files and folders excluded."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_path(Path(dirpath) / name):
                found.append(Path(dirpath) / name)
    return found


def image_files(inputs: str | Path | Sequence[str | Path], recursive: bool = True) -> list[Path]:
    """Expand files and folders into the image files to read, in a stable order, duplicates dropped.

    Raises:
        DataError: an input does not exist, or nothing to read was found.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            files += walk_images(path, recursive)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: input not found: no such image file or folder (expected an image, a DICOM "
                            "file or a folder)")
    unique = list(dict.fromkeys(files))
    if not unique:
        shown = ", ".join(str(i) for i in items[:3])
        raise DataError(f"no image files found in {shown or 'the inputs'} (PNG, JPEG, BMP, TIFF or DICOM)")
    return unique
