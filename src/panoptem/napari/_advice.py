"""panoptem's error messages in a dock's words.

The library's messages give command-line advice ("pass --overwrite", "see --help",
"--tile-size"), which a dock user cannot follow. :func:`dock_words` says it as the dock
would: a parameter or flag by the label of the dock's own control for it, and advice that has
no control in the docks said otherwise or left out."""
from __future__ import annotations

import re

#: advice with no dock control (or said better in a dock's words): pattern -> replacement
PHRASES: list[tuple[str, str]] = [
    (r";? ?see --help for allowed values", ""),
    (r" \((?:[a-z_]+=[^()]*|[a-z_]+\(\.\.\.\)) in Python\)", ""),
    (r",? or pass overwrite=True \(--overwrite\)(?: to replace it)?", ""),
    (r" (?:or )?pass --overwrite", ""),
    (r"pass --restart to start(?: training)? afresh, or ", ""),
    (r" or pass --restart( to start(?: training)? afresh)?(?=\.)", r"\1"),
    (r" \(train-volume: --restart\)", ""),
    (r"start afresh \(--restart\)", "start afresh under another New model name"),
    (r"a lower learning rate \(--lr \.\.\. --restart\)", "a lower Learning rate and another New model name"),
    (r"use --device cpu or auto", "choose Device cpu or auto"),
    (r"use one of them or --device auto", "use one of them or Device auto"),
    (r"pass --pixel-size NM if the file's metadata is wrong", "set Pixel size if the file's metadata is wrong"),
    (r"Pass --pixel-size NM to resample", "Set Pixel size to resample"),
    (r"turn resampling off \(--no-resample\)", "untick Resample to model"),
    (r"use segment2d --batch", "use 2D Inference with Batch mode"),
    (r"For volumes use segment3d --blockwise, or pick patches", "For volumes use 3D Inference, or Pick Patches"),
    (r"run it block by block with --blockwise(?:, or give an output file \(output=\), which the labels stream to)?",
     "choose a Zarr output folder (a single-plane run streams its labels to it), or run it block by block "
     "from the command line (panoptem segment3d --blockwise)"),
    (r"made by create_tiles \(panoptem tiles create\)", "made by Create tiles"),
    (r"create it with `panoptem patches` or store_dataset", "make one with Pick Patches and Store dataset"),
    (r"register one with `panoptem model register`", "register one in the Models dock"),
    (r"import it under another name with --name NEW_NAME", "give another New name"),
    (r"or use --precision fp32", "or untick Use quantized model"),
    (r"; check the path or pass --weights", "; check the path"),
    (r"pass --weights with the file's path or URL", "give the Weights file"),
    (r"(?:pass it|register it) with --weights FILE", "register it with its Weights file"),
    (r"pass (?:a local file|it) with --weights", "give it as the Weights file"),
    (r"leave --val-dir out", "leave Validation dataset empty"),
    (r" \(or another --out-dir\)", ""),
    (r", or pass --allow-unverified to download it now and record its sha256", ""),
    (r"pick the patches again with --flipbook-depth (\d+) or more",
     r"pick the patches again with Flipbook depth \1 or more"),
]

#: command-line flags whose control in the docks has another name
FLAG_CONTROLS = {"name": "new_name", "no-resample": "resample", "val-dir": "val_dir", "precision": "use_quantized"}


def control_labels(dock) -> dict[str, str]:
    """{control name: the label the user sees} of a dock's controls."""
    from magicgui.widgets import CheckBox

    from ._forms import iter_controls
    out = {}
    for w in iter_controls(dock):
        label = w.text if isinstance(w, CheckBox) else getattr(w, "label", None)
        if w.name and label:
            out[w.name] = label
    return out


def dock_words(message: str, controls: dict[str, str]) -> str:
    """``message`` as a dock says it (``controls``: see :func:`control_labels`): a parameter
    named ``'tile_size'`` or ``--tile-size`` becomes the control's label (``'Tile size'``),
    and command-line advice without a control is said in the docks' words or left out."""
    for pattern, new in PHRASES:
        message = re.sub(pattern, new, message)

    def param(m: re.Match) -> str:
        return f"'{controls.get(m.group(1), m.group(1))}' ="
    message = re.sub(r"Parameter '(\w+)' =", param, message)

    def keyword(m: re.Match) -> str:  # use plane='xy'
        return f"set '{controls[m.group(1)]}' to {m.group(2)}" if m.group(1) in controls else m.group(0)
    message = re.sub(r"use (\w+)='([^']*)'", keyword, message)

    def identifier(m: re.Match) -> str:  # a smaller flipbook_depth
        return f"'{controls[m.group(0)]}'" if m.group(0) in controls else m.group(0)
    message = re.sub(r"(?<![\w'./\\-])[a-z]+(?:_[a-z0-9]+)+(?![\w'/\\])", identifier, message)  # not in a path

    def flag(m: re.Match) -> str:
        name = FLAG_CONTROLS.get(m.group(1), m.group(1).replace("-", "_"))
        return f"'{controls[name]}'" if name in controls else m.group(0)
    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", flag, message)
