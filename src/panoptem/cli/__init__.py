"""The ``panoptem`` command line (typer lives here and nowhere else): one sub-command per job.

User errors print one sentence (no traceback) and exit with status 2. Heavy imports (torch)
happen inside the commands, so ``panoptem --help`` stays fast.
"""
from ._app import app, main, run
from . import models, segment, analysis, training, bench, tiles  # noqa: E402,F401 - each adds its commands to app

__all__ = ["app", "main", "run"]
