"""``panoptem bench``."""

import json
from typing import Optional

import typer

from ..errors import PanoptemError
from ..models.home import DEFAULT_MODEL
from ..params import Params3D
from ._app import app
from ._options import KEY_HELP, PRECISION_HELP, RUNTIME_HELP, THREADS_HELP, read_input, with_params


@app.command("bench")
@with_params(Params3D, exclude=("orthoplane", "inference_plane", "return_panoptic", "chunk_size"))
def bench_cmd(
    input: Optional[str] = typer.Argument(None, help="Volume to run on (any input segment3d reads, or 'sample'); "
                                          "omit it and give --shape for a generated one."),
    shape: Optional[str] = typer.Option(None, "--shape", help="Z,Y,X of a generated volume (mirrored copies of the "
                                        "bundled EM crop), instead of INPUT."),
    plane: str = typer.Option("xy", "--plane", help="xy, xz or yz: the stack to run."),
    orthoplane: bool = typer.Option(False, "--orthoplane", help="Run the three stacks and the consensus."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name or card path."),
    repeat: int = typer.Option(1, "--repeat", min=1, help="End-to-end and network-only runs (the median is "
                               "reported)."),
    key: Optional[str] = typer.Option(None, "--key", help=KEY_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    runtime: str = typer.Option("auto", "--runtime", help=RUNTIME_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    batch_size: int = typer.Option(0, "--batch-size", help="Slices per network call (0: automatic)."),
    params: Params3D = None,
):
    """Time a 3D run stage by stage and the network alone; one JSON line per result.

    Lines: one per stage of a run made one stage after another (seconds, CPU seconds, voxels/s,
    share, peak memory), then `network_only` (the network over the same planes), `end_to_end`
    (the run as segment3d makes it, stages overlapped) and `total` (their ratio). Every line
    holds the machine's load average: on a busy machine timings mislead.
    """
    from .._bench import bench, synthetic_volume
    if plane not in ("xy", "xz", "yz"):
        raise PanoptemError(f"--plane must be xy, xz or yz, not '{plane}'.")
    if orthoplane and plane != "xy":
        raise PanoptemError("--orthoplane runs all three stacks; drop --plane, or run one stack without --orthoplane.")
    if (input is None) == (shape is None):
        raise PanoptemError("Give either INPUT or --shape Z,Y,X (a generated volume), not both or neither.")
    if shape is not None:
        try:
            zyx = tuple(int(v) for v in shape.split(","))
        except ValueError:
            zyx = ()
        if len(zyx) != 3 or min(zyx) < 2:
            raise PanoptemError(f"--shape must be three whole numbers of 2 or more, Z,Y,X (e.g. 32,768,1024), "
                                f"not '{shape}'.")
        volume, name, vs = synthetic_volume(zyx), f"generated {shape}", None
    else:
        img = read_input(input, key, model, params.pixel_size)
        if img.data.ndim != 3:
            raise PanoptemError(f"bench needs a ZYX volume, got shape {tuple(img.data.shape)}.")
        volume, name, vs = img.data, input, img.voxel_size
    fields = params.model_dump(exclude={"orthoplane", "inference_plane", "return_panoptic", "chunk_size"})
    for rec in bench(volume, model, plane=plane, orthoplane=orthoplane, repeat=repeat, device=device,
                     runtime=runtime, precision=precision, threads=threads, batch_size=batch_size,
                     input_name=name, voxel_size=vs, **fields):
        typer.echo(json.dumps(rec))
