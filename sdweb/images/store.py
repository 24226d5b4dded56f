"""The ``outputs/`` folder: saving generated images A1111's way, browsing them, and guarding paths.

This module owns the layout ``outputs/<kind>-images/YYYY-MM-DD/NNNNN-SEED.png`` (grids in
``outputs/<kind>-grids/YYYY-MM-DD/grid-NNNN.png``), as A1111 names them:

* The counter is 1 + the highest number already in the folder (0 for an empty one), so it continues
  across restarts, and a name is never reused or overwritten, also when several threads (or
  processes) save at once.
* A file is written under a hidden temporary name in its folder, flushed, and only then given its
  final name, so a crash never leaves a half-written image where the gallery looks.
* The infotext goes into the PNG ``parameters`` text chunk (iTXt when it is not Latin-1) or, for JPEG
  and WEBP, into EXIF ``UserComment`` (see :mod:`sdweb.images.metadata`).
* :meth:`ImageStore.resolve` is the one gate from a user-supplied relative path to a file: it only
  ever returns paths inside the outputs folder.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdweb.images.metadata import exif_bytes_with_user_comment

logger = logging.getLogger(__name__)

#: Formats an image can be saved in, by the name users give (A1111's ``samples_format``).
SAVE_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
#: File extensions the gallery lists.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif"})
#: Largest side each format can store.
_MAX_SIDE = {"JPEG": 65_535, "WEBP": 16_383, "PNG": 2**31 - 1}
#: JPEG keeps EXIF in one APP1 segment of at most 64 KiB.
_MAX_JPEG_EXIF_BYTES = 65_533

#: A kind names a folder (``txt2img`` -> ``txt2img-images``): letters, digits, ``_`` and ``-`` only.
_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
#: A1111's counter is the number before the first ``-`` after an optional basename (``grid-``).
_LEADING_NUMBER_RE = re.compile(r"^(\d+)")
_TEMP_PREFIX = ".tmp-"
_LISTING_SETTLE_NS = 2_000_000_000
_STALE_TEMP_SECONDS = 3600


class PathOutsideOutputsError(ValueError):
    """A path that does not stay inside the outputs folder (``..``, absolute, a symlink out, ...)."""


def grid_shape(count: int, rows: int | None = None) -> tuple[int, int]:
    """Rows and columns for ``count`` images: A1111's default is ``round(sqrt(count))`` rows."""
    if count <= 0:
        raise ValueError("a grid needs at least one image")
    if rows is None:
        rows = max(1, round(math.sqrt(count)))
    if rows < 1:
        raise ValueError(f"grid rows must be at least 1 (got {rows})")
    rows = min(rows, count)
    return rows, math.ceil(count / rows)


def make_grid(images: Sequence[Image.Image], *, rows: int | None = None) -> Image.Image:
    """Paste images into a near-square grid, row by row, on black (each cell the first image's size)."""
    rows, cols = grid_shape(len(images), rows)
    cell_w, cell_h = images[0].size
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), color="black")
    for index, image in enumerate(images):
        cell = image if image.size == (cell_w, cell_h) else image.resize((cell_w, cell_h))
        grid.paste(cell.convert("RGB"), box=(index % cols * cell_w, index // cols * cell_h))
    return grid


def _check_kind(kind: str) -> str:
    if not _KIND_RE.match(kind):
        raise ValueError(f"output kind {kind!r} is not a plain name like 'txt2img' or 'img2img'")
    return kind


def _format_of(fmt: str) -> tuple[str, str]:
    """(Pillow format, file extension) for a user-given format name."""
    key = fmt.lower().lstrip(".")
    if key not in SAVE_FORMATS:
        raise ValueError(f"image format {fmt!r} is not supported; choose one of: png, jpg, webp")
    return SAVE_FORMATS[key], ("jpg" if key == "jpeg" else key)


def _sequence_number(name: str, basename: str) -> int | None:
    if basename:
        if not name.startswith(basename + "-"):
            return None
        name = name[len(basename) + 1 :]
    match = _LEADING_NUMBER_RE.match(name)
    return int(match.group(1)) if match else None


class ImageStore:
    """Saves images under ``outputs_root`` and lists them for the gallery.

    Thread-safe: one lock per target folder serialises picking the number; the final name is taken
    with a hard link, which fails instead of overwriting, so another process saving into the same
    folder cannot collide either. Listings are cached per folder and refreshed when the folder's
    modification time changes.

    Args:
        outputs_root: the ``outputs`` folder.
        fsync: flush each file to disk before naming it (a power cut then cannot leave a named but
            empty file). Tests may turn it off for speed.
    """

    def __init__(self, outputs_root: Path, *, fsync: bool = True) -> None:
        self.root = Path(outputs_root).absolute()
        self._fsync = fsync
        self._locks_guard = threading.Lock()
        self._folder_locks: dict[Path, threading.Lock] = {}
        self._next_number: dict[tuple[Path, str], int] = {}
        self._listing_cache: dict[Path, tuple[int, list[str]]] = {}

    # -- folders ----------------------------------------------------------------------------------

    def images_dir(self, kind: str = "txt2img") -> Path:
        return self.root / f"{_check_kind(kind)}-images"

    def grids_dir(self, kind: str = "txt2img") -> Path:
        return self.root / f"{_check_kind(kind)}-grids"

    def _kind_dir(self, kind: str, grids: bool) -> Path:
        return self.grids_dir(kind) if grids else self.images_dir(kind)

    def _folder_lock(self, folder: Path) -> threading.Lock:
        with self._locks_guard:
            return self._folder_locks.setdefault(folder, threading.Lock())

    # -- saving -------------------------------------------------------------------------------------

    def save(
        self,
        image: Image.Image,
        *,
        infotext: str,
        seed: int,
        kind: str = "txt2img",
        fmt: str = "png",
        jpeg_quality: int = 80,
        folder: Path | None = None,
        now: datetime | None = None,
    ) -> Path:
        """Write one image as ``<folder>/YYYY-MM-DD/NNNNN-SEED.<ext>`` and return its path.

        Args:
            image: the picture.
            infotext: its A1111 infotext (PNG ``parameters`` chunk / EXIF UserComment).
            seed: the image's seed, part of the file name.
            kind: ``txt2img`` saves under ``outputs/txt2img-images``.
            fmt: ``png``, ``jpg`` or ``webp``.
            jpeg_quality: 1-100, for JPEG and WEBP.
            folder: replaces ``outputs/<kind>-images`` (A1111's ``outdir_txt2img_samples``); the date
                folder is still made inside it.
            now: the time whose date names the folder (default: now, local time, as A1111).
        """
        base = Path(folder) if folder is not None else self.images_dir(kind)
        return self._save_numbered(
            image, infotext=infotext, base=base, basename="", suffix=f"-{int(seed)}", digits=5,
            fmt=fmt, jpeg_quality=jpeg_quality, now=now,
        )

    def save_grid(
        self,
        images: Sequence[Image.Image],
        *,
        infotext: str,
        seed: int,
        kind: str = "txt2img",
        fmt: str = "png",
        jpeg_quality: int = 80,
        rows: int | None = None,
        folder: Path | None = None,
        now: datetime | None = None,
    ) -> Path:
        """Write a grid of ``images`` as ``<kind>-grids/YYYY-MM-DD/grid-NNNN.<ext>`` (A1111's naming).

        ``seed`` is the batch's first seed; like A1111's default grid names, it is not in the file name
        (it is in the infotext).
        """
        del seed  # kept for a symmetric signature; A1111 names grids by counter only
        base = Path(folder) if folder is not None else self.grids_dir(kind)
        grid = make_grid(images, rows=rows)
        return self._save_numbered(
            grid, infotext=infotext, base=base, basename="grid", suffix="", digits=4,
            fmt=fmt, jpeg_quality=jpeg_quality, now=now,
        )

    def save_composed(
        self,
        image: Image.Image,
        *,
        infotext: str,
        kind: str = "txt2img",
        grid: bool = True,
        basename: str = "grid",
        fmt: str = "png",
        jpeg_quality: int = 80,
        folder: Path | None = None,
        now: datetime | None = None,
    ) -> Path:
        """Write an image a script composed (a labelled grid) as ``<kind>-grids/DATE/<basename>-NNNN.png``.

        ``grid=False`` saves it among the images instead (``<kind>-images/DATE/<basename>-NNNNN.png``);
        ``folder`` replaces either (an ``outdir_*`` setting).
        """
        base = Path(folder) if folder is not None else self.grids_dir(kind) if grid else self.images_dir(kind)
        return self._save_numbered(
            image, infotext=infotext, base=base, basename=basename, suffix="", digits=4 if grid else 5,
            fmt=fmt, jpeg_quality=jpeg_quality, now=now,
        )

    def _save_numbered(
        self,
        image: Image.Image,
        *,
        infotext: str,
        base: Path,
        basename: str,
        suffix: str,
        digits: int,
        fmt: str,
        jpeg_quality: int,
        now: datetime | None,
    ) -> Path:
        pil_format, extension = _format_of(fmt)
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be between 1 and 100 (got {jpeg_quality})")
        if max(image.size) > _MAX_SIDE[pil_format]:
            raise ValueError(
                f"{image.width}x{image.height} is too large for {pil_format} "
                f"(at most {_MAX_SIDE[pil_format]} pixels a side); save as PNG"
            )
        exif = None
        if pil_format in ("JPEG", "WEBP") and infotext:
            exif = exif_bytes_with_user_comment(infotext)
            if pil_format == "JPEG" and len(exif) > _MAX_JPEG_EXIF_BYTES:
                raise ValueError(
                    f"the infotext ({len(infotext):,} characters) does not fit in JPEG EXIF (64 KiB); "
                    "save as PNG or WEBP"
                )
        folder = base / (now or datetime.now()).strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)

        temp_path = folder / f"{_TEMP_PREFIX}{uuid.uuid4().hex}.{extension}"
        try:
            with open(temp_path, "xb") as handle:
                self._encode(image, handle, pil_format, infotext=infotext, exif=exif, quality=jpeg_quality)
                handle.flush()
                if self._fsync:
                    os.fsync(handle.fileno())
            final = self._claim_name(temp_path, folder, basename, suffix, digits, extension)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        logger.info("saved %s", final)
        return final

    @staticmethod
    def _encode(
        image: Image.Image,
        handle: BinaryIO,
        pil_format: str,
        *,
        infotext: str,
        exif: bytes | None,
        quality: int,
    ) -> None:
        if pil_format == "PNG":
            info = PngInfo()
            if infotext:
                # Pillow writes tEXt for Latin-1 text and switches to iTXt (UTF-8) otherwise.
                info.add_text("parameters", infotext)
            image.save(handle, format="PNG", pnginfo=info)
            return
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        options: dict[str, object] = {"quality": quality}
        if exif is not None:
            options["exif"] = exif
        image.save(handle, format=pil_format, **options)

    def _claim_name(
        self, temp_path: Path, folder: Path, basename: str, suffix: str, digits: int, extension: str
    ) -> Path:
        """Give the finished temp file the next free numbered name; never replaces an existing file."""
        key = (folder, basename)
        with self._folder_lock(folder):
            number = self._next_number.get(key)
            if number is None:
                self._remove_stale_temp_files(folder, keep=temp_path)
                number = self.next_sequence_number(folder, basename)
            for _ in range(10_000):
                stem = f"{number:0{digits}d}" if not basename else f"{basename}-{number:0{digits}d}"
                final = folder / f"{stem}{suffix}.{extension}"
                if self._link_exclusively(temp_path, final):
                    self._next_number[key] = number + 1
                    return final
                # Someone else (another process, or a file copied in) took it: look again.
                number = max(number + 1, self.next_sequence_number(folder, basename))
        raise OSError(f"could not find a free file name in {folder}")

    @staticmethod
    def _remove_stale_temp_files(folder: Path, *, keep: Path) -> None:
        """Delete temp files a crashed save left behind (old enough that no save can still own them)."""
        cutoff = time.time() - _STALE_TEMP_SECONDS
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith(_TEMP_PREFIX) or entry.path == str(keep):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        logger.info("removed %s, left by an interrupted save", entry.path)
                except FileNotFoundError:
                    continue

    @staticmethod
    def _link_exclusively(temp_path: Path, final: Path) -> bool:
        """Rename ``temp_path`` to ``final`` only if ``final`` does not exist. False when it does."""
        try:
            os.link(temp_path, final)
        except FileExistsError:
            return False
        except OSError as error:
            # File systems without hard links (some FAT/network mounts): the folder lock still keeps
            # this process from overwriting; check, then rename.
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if final.exists():
                return False
            os.replace(temp_path, final)
            return True
        temp_path.unlink()
        return True

    @staticmethod
    def next_sequence_number(folder: Path, basename: str = "") -> int:
        """A1111's rule: 1 + the highest number starting a file name in ``folder`` (0 when none)."""
        highest = -1
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    number = _sequence_number(entry.name, basename)
                    if number is not None and number > highest:
                        highest = number
        except FileNotFoundError:
            return 0
        return highest + 1

    # -- browsing -----------------------------------------------------------------------------------

    def list_dates(self, kind: str = "txt2img", *, grids: bool = False) -> list[str]:
        """Date folders of a kind, newest first (``["2026-11-25", "2026-11-24", ...]``)."""
        base = self._kind_dir(kind, grids)
        try:
            with os.scandir(base) as entries:
                names = [
                    entry.name
                    for entry in entries
                    if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
                ]
        except FileNotFoundError:
            return []
        return sorted(names, reverse=True)

    def _image_names(self, folder: Path) -> list[str]:
        """Image file names of a folder, newest (highest counter) first; cached by folder mtime."""
        try:
            mtime = folder.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        with self._locks_guard:
            cached = self._listing_cache.get(folder)
        # A folder changed in the last moments may change again within the file system's timestamp
        # granularity without its mtime moving: only trust the cache for folders that have settled.
        settled = time.time_ns() - mtime > _LISTING_SETTLE_NS
        if cached is not None and cached[0] == mtime and settled:
            return cached[1]
        with os.scandir(folder) as entries:
            names = [
                entry.name
                for entry in entries
                if not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                and entry.is_file(follow_symlinks=False)
            ]

        def newest_first(name: str) -> tuple[int, str]:
            number = _LEADING_NUMBER_RE.match(name.removeprefix("grid-"))
            return (int(number.group(1)) if number else -1, name)

        names.sort(key=newest_first, reverse=True)
        with self._locks_guard:
            self._listing_cache[folder] = (mtime, names)
        return names

    def _date_dir(self, kind: str, date: str, grids: bool) -> Path:
        base = self._kind_dir(kind, grids)
        folder = self.resolve(str(PurePosixPath(base.relative_to(self.root).as_posix()) / date))
        return folder

    def list_images(
        self, kind: str = "txt2img", date: str = "", *, offset: int = 0, limit: int = 50, grids: bool = False
    ) -> list[Path]:
        """One page of the images of a date folder, newest first, without opening any image."""
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must not be negative (got {offset}, {limit})")
        folder = self._date_dir(kind, date, grids)
        names = self._image_names(folder)
        return [folder / name for name in names[offset : offset + limit]]

    def total(self, kind: str = "txt2img", date: str = "", *, grids: bool = False) -> int:
        """How many images a date folder holds."""
        return len(self._image_names(self._date_dir(kind, date, grids)))

    # -- the path gate ------------------------------------------------------------------------------

    def relative(self, path: Path) -> str:
        """The ``/``-separated path of a file inside the outputs folder, as :meth:`resolve` takes it."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            raise PathOutsideOutputsError(f"{path} is not inside the outputs folder {self.root}") from None

    def resolve(self, relative: str) -> Path:
        """The real path of ``relative`` (``"txt2img-images/2026-11-25/00001-5.png"``) inside outputs.

        Raises:
            PathOutsideOutputsError: for anything that could reach outside: ``..`` parts, absolute or
                drive paths, backslashes, NUL bytes, or a symlink whose target lies outside.
        """
        from sdweb.safepath import UnsafePathError, confine

        try:
            return confine(self.root, relative, what="output path", backslash_is_separator=False)
        except UnsafePathError as exc:
            raise PathOutsideOutputsError(str(exc)) from None

    def delete(self, relative: str) -> Path:
        """Delete one output image (same gate as :meth:`resolve`) and return the path it had.

        Raises:
            PathOutsideOutputsError: the path is not inside outputs.
            FileNotFoundError: there is no such file.
            IsADirectoryError: it names a folder (folders are never deleted here).
        """
        path = self.resolve(relative)
        if path.is_dir():
            raise IsADirectoryError(f"{relative!r} is a folder; only image files can be deleted")
        if not path.is_file():
            raise FileNotFoundError(f"no output image {relative!r}")
        path.unlink()
        with self._locks_guard:
            self._listing_cache.pop(path.parent, None)
        logger.info("deleted %s", path)
        return path
