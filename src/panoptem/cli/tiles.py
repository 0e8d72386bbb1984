"""``panoptem tiles create | merge``: empanada's Create Tiles / Merge Tiles for large 2D images."""

import json
from typing import Optional

import typer

from ._app import app
from ._options import user_errors

tiles_app = typer.Typer(no_args_is_help=True, help="Cut a large 2D image (and its mask) into tiles to annotate, "
                                                  "and put them back together.")
app.add_typer(tiles_app, name="tiles")


@tiles_app.command("create")
@user_errors
def tiles_create(
    image: str = typer.Argument(..., help="A 2D image (TIFF/BigTIFF, read lazily; any format panoptem reads)."),
    output: str = typer.Option(..., "-o", "--output", help="Folder to write the tiles into (images/, masks/, "
                               "tiles.json)."),
    tile_size: int = typer.Option(512, "--tile-size", help="Tile side in pixels; edge tiles are padded with 0."),
    mask: Optional[str] = typer.Option(None, "--mask", help="The image's labels, cut alike into masks/."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier tile folder."),
):
    """Create Tiles: square tiles of a large 2D image, to annotate or process one at a time."""
    from ..tiles import create_tiles
    written = create_tiles(image, output, tile_size, mask=mask, overwrite=overwrite)
    typer.echo(json.dumps({"tiles": len(written), "folder": str(written[0].parent.parent) if written else output}))


@tiles_app.command("merge")
@user_errors
def tiles_merge(
    folder: str = typer.Argument(..., help="A tile folder made by `panoptem tiles create` (masks painted or not)."),
    output: str = typer.Option(..., "-o", "--output", help="Folder to write image.tif (and mask.tif) into."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier image.tif / mask.tif there."),
):
    """Merge Tiles: the image (its dtype kept) and the mask from the tiles, padding cut off."""
    from ..tiles import merge_tiles
    written = merge_tiles(folder, output, overwrite=overwrite)
    typer.echo(json.dumps({k: str(v) for k, v in written.items()}))
