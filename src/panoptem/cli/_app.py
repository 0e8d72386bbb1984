"""The ``panoptem`` command line: the app, and the entry point that turns every user
error into one line and exit status 2."""

import errno
import sys
from pathlib import Path

import typer

from ..errors import PanoptemError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Panoptic segmentation of organelles in EM images and volumes.")


INTERRUPTED = "interrupted. An output is written whole or not at all; re-run the same command to resume " \
              "(segment3d keeps the network outputs computed so far, segment2d --batch the slices done, training " \
              "its checkpoint, patches finishes the dataset it was adding to)."


# Libraries that decode input files: an error of theirs that escaped the readers' own checks
# is still a file the user can fix (or replace), so it gets one line, not a traceback.
_READER_LIBRARIES = ("tifffile", "imagecodecs", "PIL", "imageio", "zarr", "numcodecs", "h5py", "mrcfile")


def _known_error(e: BaseException) -> str | None:
    """One line for an error that a bad input, not a bug, explains; None otherwise."""
    first = one_line(e)[:200]
    if isinstance(e, MemoryError):
        return (f"not enough memory for this input ({first or 'MemoryError'}); crop it, use --tile-size for a "
                "large 2D image, or run on a machine with more memory.")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({e.filename})" if e.filename else ""
        return (f"the disk is full{where}: {first}. Free space on the output's disk (a 3D run keeps its work "
                "folder beside the output; --cache-dir puts the network outputs elsewhere) or write the output to "
                "a larger one, then run the same command again: a 3D run resumes where it stopped.")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = "a file or folder this command uses"
        if e.filename:  # a rename's target (filename2): the file another user owns in a shared folder
            f = Path(e.filename2 or e.filename)  # else a file panoptem was creating (a temporary or lock): its folder
            where = f"'{f.parent}'" if not f.exists() else f"'{f}'"
        return (f"no permission to use {where} ({e.strerror or first}); write outputs (and --cache-dir, and "
                "PANOPTEM_HOME for models and caches) to a folder you can write to, and give inputs you can read.")
    if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:
        where = f" ({str(e.filename)[:60]}...)" if e.filename else ""
        return (f"a file name is too long for the file system{where}; shorten the output, folder or model names "
                "(each part of a path to 200 characters or fewer).")
    if type(e).__module__.split(".")[0] in _READER_LIBRARIES:
        return (f"could not read an input file ({type(e).__name__}: {first}); check that it is complete and in "
                "the format its name says.")
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {one_line(message)}", err=True)


def _click_error(name: str) -> type:
    """An exception class of the click that typer runs on (its own copy in recent typer)."""
    import importlib
    module = importlib.import_module(typer.BadParameter.__module__)
    return getattr(module, name, type(f"_No{name}", (Exception,), {}))


_UsageError, _ClickException = _click_error("UsageError"), _click_error("ClickException")
_NoArgsIsHelp, _ClickAbort = _click_error("NoArgsIsHelpError"), _click_error("Abort")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; user errors, unknown options and values that do
    not parse print one line and exit 2."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy on degenerate data: nothing a user can act on
            code = app(args=argv, prog_name="panoptem", standalone_mode=False)
    except _NoArgsIsHelp as e:  # `panoptem` or `panoptem model` alone: the help
        e.show()
        return 2
    except _UsageError as e:  # unknown option, missing argument, value of the wrong type
        where = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
        typer.echo(f"error: {one_line(e.format_message()).rstrip('.')}{where}.", err=True)
        return 2
    except _ClickException as e:
        typer.echo(f"error: {one_line(e.format_message())}", err=True)
        return e.exit_code
    except (typer.Abort, _ClickAbort):
        typer.echo("aborted.", err=True)
        return 1
    except PanoptemError as e:
        typer.echo(f"error: {one_line(e)}", err=True)
        return 2
    except SystemExit as e:
        if e.code == 130:
            typer.echo(INTERRUPTED, err=True)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - only errors that a bad input explains; the rest re-raise
        msg = _known_error(e)
        if msg is None:
            raise
        typer.echo(f"error: {msg}", err=True)
        return 2
    if code == 130:  # Ctrl-C, turned into exit status 130 by the command-line library
        typer.echo(INTERRUPTED, err=True)
    return code if isinstance(code, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
