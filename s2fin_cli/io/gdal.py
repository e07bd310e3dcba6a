"""GDAL's own words, in s2fin's form: messages collected, creation options checked, files verified.

GDAL reports most problems through its error handler rather than as return values: a creation
option it does not know is a *warning* (the file is written without it), a write that fails while
a dataset is closed is an *error message* and nothing more. rasterio turns those messages into
log records (``rasterio._env`` / ``rasterio._err``); this module routes them:

- inside :func:`gdal_messages`, into a list the caller inspects (and nowhere else);
- elsewhere, WARNING records become one ``warning: GDAL: ...`` line and the rest debug lines, so
  GDAL never prints raw ``ERROR 1: ...`` or ``CPLE_...`` lines of its own.

:func:`check_creation_profile` creates the dataset a writer is about to create, in memory
(``/vsimem/``), with the same driver, size, data type and creation options: GDAL's refusal of an
option (an unknown option, a value outside its list, ``BLOCKXSIZE=7``, ``PREDICTOR=3`` on
integers) becomes a :class:`~s2fin_cli.errors.ConfigError` (exit 9) naming GDAL's reason, before
the real output is touched. :func:`close_and_verify` closes a written dataset and reopens it: a
close that failed (a full disk while GDAL flushes its last blocks and directory) is an ``OSError``
the atomic writers turn into "disk full" or "could not write" (exit 8).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import secrets
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from s2fin_cli import console
from s2fin_cli.errors import ConfigError

_local = threading.local()
_installed = threading.Lock()
_handler: _Route | None = None
# rasterio's loggers that carry GDAL's messages.
_GDAL_LOGGERS = ("rasterio._env", "rasterio._err", "rasterio._io", "rasterio._base")
_SIGNALLED = re.compile(r"GDAL signalled an error: err_no=\d+, msg=(?P<q>['\"])(?P<msg>.*)(?P=q)$",
                        re.S)
_CPLE = re.compile(r"^(?P<cls>CPLE_\w+) in (?P<msg>.*)$", re.S)
# GDAL's classes of warnings that mean "this creation option was not applied".
_OPTION_REFUSALS = ("CPLE_NotSupported", "CPLE_IllegalArg")


class GdalMessage:
    """One message GDAL signalled: its class (``CPLE_...`` or ``error``) and text."""

    def __init__(self, kind: str, text: str, level: int) -> None:
        self.kind = kind
        self.text = text
        self.level = level

    def __str__(self) -> str:
        return self.text


def _parse(record: logging.LogRecord) -> GdalMessage | None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is not GDAL's message
        return None
    match = _SIGNALLED.match(message)
    if match:
        return GdalMessage("error", one_line(match.group("msg")), record.levelno)
    match = _CPLE.match(message)
    if match:
        return GdalMessage(match.group("cls"), one_line(match.group("msg")), record.levelno)
    return None


class _Route(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = _parse(record)
        if message is None:
            return
        sinks: list[list[GdalMessage]] | None = getattr(_local, "sinks", None)
        if sinks:
            sinks[-1].append(message)
        elif record.levelno >= logging.WARNING:
            console.warn(f"GDAL: {message.text}")
        else:
            console.debug(f"GDAL: {message.text}")


def install_gdal_routing() -> None:
    """Route rasterio's GDAL log records through s2fin (idempotent)."""
    global _handler
    with _installed:
        if _handler is not None:
            return
        _handler = _Route(logging.DEBUG)
        for name in _GDAL_LOGGERS:
            logger = logging.getLogger(name)
            # GDAL's error messages are INFO records (rasterio raises an exception next, or not:
            # a failure while a dataset is closed is only this record).
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(_handler)
            # Not also printed raw by logging's last-resort handler or the root logger's.
            logger.propagate = False


def one_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped (GDAL's messages may span lines)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def error_text(exc: BaseException) -> str:
    """An exception's message as one line (its type when it has none)."""
    return one_line(str(exc)) or type(exc).__name__


@contextlib.contextmanager
def gdal_messages() -> Iterator[list[GdalMessage]]:
    """Collect the messages GDAL signals in this thread inside the block (instead of showing
    them). Opens a rasterio environment, so messages GDAL emits while a dataset is closed reach
    rasterio's handler (and this list) rather than GDAL's default handler (raw stderr)."""
    install_gdal_routing()
    collected: list[GdalMessage] = []
    sinks: list[list[GdalMessage]] = getattr(_local, "sinks", None) or []
    _local.sinks = sinks
    sinks.append(collected)
    try:
        with rasterio.Env():
            yield collected
    finally:
        sinks.pop()


def _options_text(options: Mapping[str, Any]) -> str:
    return " ".join(f"{k.upper()}={v}" for k, v in options.items()) or "(none)"


# The in-memory probe's file name, as GDAL's messages mention it ("_TIFFVSetField:/vsimem/...").
_PROBE_NAME = re.compile(r"(?:[\w]+:)?\S*s2fin-probe-[0-9a-f]+(?:-src)?\.tif:?\s*")


def _refusal(driver: str, options: Mapping[str, Any], reason: str) -> ConfigError:
    reason = _PROBE_NAME.sub("", reason).strip() or reason
    return ConfigError(
        f"GDAL's {driver} driver refuses the creation options {_options_text(options)}: {reason}",
        hint=f"check --co against https://gdal.org/drivers/raster/{driver.lower()}.html",
    )


# Profile keys that are not creation options.
_PROFILE_KEYS = {"driver", "width", "height", "count", "dtype", "crs", "transform", "nodata",
                 "gcps", "rpcs"}


def creation_options_of(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The creation options in a rasterio profile (everything but the dataset's shape/georef)."""
    return {k: v for k, v in profile.items() if k.lower() not in _PROFILE_KEYS}


def check_creation_profile(profile: Mapping[str, Any],
                           user_options: Mapping[str, Any] | None = None) -> None:
    """Create ``profile``'s dataset in memory: refuse, with GDAL's reason, what GDAL refuses.

    Raises :class:`ConfigError` when creating fails, or when GDAL says it ignores a creation
    option (``CPLE_NotSupported``/``CPLE_IllegalArg``). ``user_options`` (the ``--co`` given) are
    named in the message; the profile's own options otherwise.
    """
    driver = str(profile.get("driver", "GTiff"))
    options = dict(user_options) if user_options else creation_options_of(profile)
    path = f"/vsimem/s2fin-probe-{secrets.token_hex(8)}.tif"
    with gdal_messages() as messages, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path, "w", **profile):
                pass
        except (RasterioError, OSError, ValueError, TypeError) as exc:
            reasons = [m.text for m in messages if m.kind == "error"] or [error_text(exc)]
            raise _refusal(driver, options, reasons[-1]) from None
        finally:
            with contextlib.suppress(Exception):
                rasterio.shutil.delete(path)
    refused = [m.text for m in messages if m.kind in _OPTION_REFUSALS]
    if refused:
        raise _refusal(driver, options, refused[0])


def check_copy_options(driver: str, options: Mapping[str, Any], *, dtype: str = "uint8",
                       count: int = 1, user_options: Mapping[str, Any] | None = None) -> None:
    """Like :func:`check_creation_profile` for a driver written by copying (COG): copy a small
    in-memory GeoTIFF with ``options`` and refuse what GDAL refuses (naming ``user_options``,
    the ``--co`` given, when there are any)."""
    named = dict(user_options) if user_options else dict(options)
    from affine import Affine

    token = secrets.token_hex(8)
    source, target = f"/vsimem/s2fin-probe-{token}-src.tif", f"/vsimem/s2fin-probe-{token}.tif"
    with gdal_messages() as messages, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(source, "w", driver="GTiff", width=16, height=16, count=count,
                               dtype=dtype, transform=Affine(1, 0, 0, 0, -1, 16)):
                pass
            rasterio.shutil.copy(source, target, driver=driver, **options)
        except (RasterioError, OSError, ValueError, TypeError) as exc:
            reasons = [m.text for m in messages if m.kind == "error"] or [error_text(exc)]
            raise _refusal(driver, named, reasons[-1]) from None
        finally:
            for p in (source, target):
                with contextlib.suppress(Exception):
                    rasterio.shutil.delete(p)
    refused = [m.text for m in messages if m.kind in _OPTION_REFUSALS]
    if refused:
        raise _refusal(driver, named, refused[0])


def close_and_verify(dataset: Any, path: Any) -> None:
    """Close a dataset written at ``path`` and reopen it.

    GDAL writes its last blocks and the file's directory when a dataset is closed and reports a
    failure there (a full disk) only as a message: any error message while closing, or a file
    that does not open again, raises ``OSError`` (``EIO``) with GDAL's reason.
    """
    with gdal_messages() as messages:
        dataset.close()
    errors = [m.text for m in messages if m.kind == "error"]
    if errors:
        raise OSError(errno.EIO, f"GDAL failed to finish the file: {errors[0]}")
    verify_raster(path)


def verify_raster(path: Any) -> None:
    """Reopen a just-written raster; ``OSError`` (``EIO``) when GDAL cannot read it back."""
    with gdal_messages() as messages, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as ds:
                _ = ds.count, ds.block_shapes
        except (RasterioError, OSError) as exc:
            reason = next((m.text for m in messages if m.kind == "error"), error_text(exc))
            raise OSError(errno.EIO, f"the written file does not read back: {reason}") from None
