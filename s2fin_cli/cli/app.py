"""The Typer application, its global options, and the one place errors become exit codes.

Also the one place signals are handled: SIGINT, SIGTERM and SIGHUP all raise
:class:`~s2fin_cli.errors.Interrupted` in the main thread (the first one; later ones are ignored
while the run cleans up), so temporary files are removed by the same exception path as any
failure, and the CLI prints one line and exits ``128 + signal number`` (130, 143, 129). Python
warnings and GDAL's messages are shown as one ``warning: ...`` line each, never raw.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from typer import TyperException
from typer.core import TyperGroup

from s2fin_cli import __version__, console
from s2fin_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, Interrupted, S2finError

# The signals that end a run cleanly (Ctrl-C, kill/scheduler time limits, a closed terminal).
_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _on_signal(signum: int, _frame: Any) -> None:
    # The first signal interrupts; the cleanup it starts must not be interrupted in turn.
    for sig in _SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum, signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_handled() -> Iterator[None]:
    """Install :func:`_on_signal` for INT/TERM/HUP (main thread only), restore on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    text = " ".join(str(message).split())
    console.warn(f"{text} ({category.__name__})" if category is not UserWarning else text)


class _S2finGroup(TyperGroup):
    """Turns user errors into one line on stderr and a distinct exit code, never a traceback.

    Done here rather than around ``app()`` so the console script and Typer's test runner behave
    the same. Anything that is not an :class:`S2finError` is a bug: exit code 1, with the
    traceback only at ``-vv``.
    """

    def invoke(self, ctx: Any) -> Any:
        import rasterio

        from s2fin_cli.io.gdal import install_gdal_routing

        install_gdal_routing()
        try:
            # One GDAL environment for the whole command: GDAL's messages from calls made
            # outside rasterio.open (a CRS lookup, a transform) reach rasterio's handler and
            # s2fin's routing instead of GDAL's default handler, which prints them raw.
            with _signals_handled(), warnings.catch_warnings(), rasterio.Env():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except S2finError as exc:
            console.error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            name = exc.name if isinstance(exc, Interrupted) else "SIGINT"
            code = exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED
            console.error_line(f"interrupted by {name}; no partial output was left")
            raise typer.Exit(code) from None
        except (TyperException, typer.Exit, typer.Abort):
            raise  # Typer's own usage errors and exits keep their messages and codes
        except Exception as exc:
            if console.verbosity() >= 2:
                console.stderr.print_exception()
            console.error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with -vv "
                               "for a traceback, and please report it)")
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(
    cls=_S2finGroup,
    name="s2fin",
    help="Land-cover maps from co-registered hyperspectral and LiDAR/SAR rasters with S²Fin.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def version_text() -> str:
    """s2fin's version and the versions of the engines it runs on."""
    import rasterio
    import torch

    cuda = torch.cuda.is_available()
    cuda_text = f"available ({torch.cuda.get_device_name(0)})" if cuda else "not available"
    try:
        from osgeo import gdal

        osgeo_text = gdal.__version__
    except ImportError:
        osgeo_text = "not installed (not needed by s2fin)"
    try:
        import pyogrio

        ogr_text = f"pyogrio {pyogrio.__version__}, GDAL {pyogrio.__gdal_version_string__}"
    except ImportError:
        ogr_text = "pyogrio not installed (needed for vector labels)"
    return (
        f"s2fin {__version__}\n"
        f"torch {torch.__version__}, CUDA {cuda_text}\n"
        f"rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__} (rasterio's)\n"
        f"{ogr_text} (vector labels)\n"
        f"osgeo.gdal {osgeo_text}"
    )


def _version_callback(value: bool) -> None:
    if value:
        console.stdout.print(version_text(), markup=False)
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More messages (-vv: debug).")
    ] = 0,
    quiet: Annotated[int, typer.Option("--quiet", "-q", count=True, help="Errors only.")] = 0,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Show versions of s2fin, torch (and CUDA), rasterio and GDAL."),
    ] = False,
) -> None:
    """Land-cover maps from co-registered hyperspectral and LiDAR/SAR rasters with S²Fin."""
    console.set_verbosity(verbose - quiet)


def _register_commands() -> None:
    # One module per command, exposing one function named after the command; imported here so
    # command modules never import this module (no cycles).
    import importlib

    for name in _COMMANDS:
        module = importlib.import_module(f"s2fin_cli.cli.{name}_cmd")
        app.command(name)(getattr(module, name))
    for name in _GROUPS:
        module = importlib.import_module(f"s2fin_cli.cli.{name}_cmd")
        app.add_typer(getattr(module, name), name=name)


# The commands in the order `s2fin --help` lists them.
_COMMANDS: tuple[str, ...] = ("inspect", "stack", "synth", "train", "predict", "suggest",
                               "merge", "evaluate")
# Command groups with subcommands (`s2fin datasets import ...`): a Typer object per module.
_GROUPS: tuple[str, ...] = ("datasets",)

_register_commands()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="s2fin")
