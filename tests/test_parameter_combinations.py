"""Every combination of run parameters an EM user can set runs and keeps the invariants of its
output (fuzzed with hypothesis, on a small synthetic volume and a hand-set network): the shape
of the input, one id per object, the class's segment alone with Semantic only."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panoptem.inference.segment2d import segment_2d
from panoptem.inference.segment3d import segment_3d

from _models import dark_blob_model
from test_blockwise import scene

COMBOS = settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=60,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SHARED = dict(semantic_only=st.booleans(), fine_boundaries=st.booleans(),
              maximum_objects_per_class=st.sampled_from([0, 10000]), downsampling=st.sampled_from([1, 2]),
              tta=st.booleans(), fill_holes_in_segmentation=st.booleans(),
              confidence_thr=st.sampled_from([0.3, 0.5, 0.8]), center_confidence_thr=st.sampled_from([0.05, 0.1, 0.5]),
              min_distance_object_centers=st.sampled_from([1, 3, 9]))
PARAMS_3D = st.fixed_dictionaries(dict(
    SHARED, inference_plane=st.sampled_from(["xy", "xz", "yz"]), orthoplane=st.booleans(),
    fusion=st.sampled_from(["consensus", "probability"]), median_slices=st.sampled_from([1, 3, 5]),
    label_erosion=st.sampled_from([0, 1]), label_dilation=st.sampled_from([0, 2]), bridge_gaps=st.sampled_from([0, 1]),
    allow_one_view=st.booleans(), pixel_vote_thr=st.sampled_from([1, 2]), return_panoptic=st.booleans(),
    min_size=st.sampled_from([0, 100]), min_extent=st.sampled_from([0, 3]),
    iou_thr=st.sampled_from([0.1, 0.25, 0.6]), ioa_thr=st.sampled_from([0.1, 0.25, 0.6])))
PARAMS_2D = st.fixed_dictionaries(dict(SHARED, min_piece_area=st.sampled_from([0, 40]), batch=st.booleans()))


@pytest.fixture(scope="module")
def volume():
    return scene((20, 96, 96))


def _check_ids(labels: np.ndarray, shape, segment: int | None) -> None:
    """The shape of the input, unsigned ids, and only the class's ``segment`` id where given."""
    assert labels.shape == tuple(shape) and labels.dtype.kind == "u"
    if segment is not None:
        assert set(np.unique(labels).tolist()) <= {0, segment}


@COMBOS
@given(p=PARAMS_3D)
def test_3d_parameter_combinations(volume, p):
    res = segment_3d(volume, dark_blob_model(), **p)
    lab = res.labels["mitochondria"]
    _check_ids(lab, volume.shape, 1 if p["semantic_only"] else None)  # a class's output: the segment is 1
    ids = np.unique(lab)
    assert res.objects["mitochondria"] == ids.size - 1  # the count is what was written
    if not p["semantic_only"] and not p["label_erosion"]:
        assert ids[1:].tolist() == list(range(1, ids.size))  # objects numbered 1..N
    # (erosion may remove an object, whose number then stays unused)
    assert bool(res.stacks) == (p["return_panoptic"])  # the per-plane stacks only when asked


@COMBOS
@given(p=PARAMS_2D)
def test_2d_parameter_combinations(volume, p):
    batch = p.pop("batch")
    img = volume[:3] if batch else volume[8]
    lab = segment_2d(img, dark_blob_model(), batch=batch, **p)
    _check_ids(lab, img.shape, (p["maximum_objects_per_class"] or 1) if p["semantic_only"] else None)  # class x div
    if not p["semantic_only"] and p["maximum_objects_per_class"]:
        assert (np.unique(lab)[1:] // p["maximum_objects_per_class"] == 1).all()  # class 1's objects
