"""Small hand-set models for tests (no training, no download)."""
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from panoptem.models.card import ClassInfo, ModelCard, Weights
from panoptem.models.load import LoadedModel


def _blob_outputs(strength: torch.Tensor, cut: float) -> Dict[str, torch.Tensor]:
    """Outputs at stride 4 of a per-pixel foreground ``strength``: foreground where its 4 x 4 mean
    passes ``cut``, the centre heatmap its blur, offsets 0."""
    d4 = F.avg_pool2d(strength, 4)
    blur = F.avg_pool2d(d4, 5, stride=1, padding=2, count_include_pad=False)
    return {"sem_logits": 20 * (d4 - cut), "ctr_hmp": blur, "offsets": torch.zeros_like(d4).repeat(1, 2, 1, 1)}


class DarkBlobNet(nn.Module):
    """A hand-set network with a small receptive field: dark pixels are
    foreground, the centre heatmap is a blurred darkness map, offsets are 0.
    Outputs at stride 4, like the real networks."""

    def forward(self, x):
        return _blob_outputs(F.relu(-x - 0.5), 0.75)  # x is normalised: dark < 0


def dark_blob_model():
    card = ModelCard(name="darkblob", weights=Weights(file="none"), padding_factor=32, label_divisor=None)
    return LoadedModel(card, DarkBlobNet().eval(), "cpu")


class GreyBlobNet(nn.Module):
    """:class:`DarkBlobNet` of mid-grey pixels (normalised near 0): what a network may make of a
    featureless fill, as the real ones did of the mean grey that missing data becomes."""

    def forward(self, x):
        return _blob_outputs(F.relu(0.5 - x.abs()), 0.25)


def grey_blob_model():
    card = ModelCard(name="greyblob", weights=Weights(file="none"), padding_factor=32, label_divisor=None)
    return LoadedModel(card, GreyBlobNet().eval(), "cpu")


class NeighbourNet(nn.Module):
    """:class:`DarkBlobNet` of the brightest of a plane and its neighbours (the input's
    channels): a pixel is foreground only where the plane and both neighbours are dark, so its
    outputs equal DarkBlobNet's on a volume max-filtered along the stack's axis."""

    def forward(self, x):
        return _blob_outputs(F.relu(-x.amax(dim=1, keepdim=True) - 0.5), 0.75)


def neighbour_model(voxel_size_nm: float | None = None):
    """A model that sees each plane with one neighbour on each side (card ``context_slices`` 1),
    trained (with ``voxel_size_nm``) on planes that far apart."""
    card = ModelCard(name="neighbours", weights=Weights(file="none"), padding_factor=32, label_divisor=None,
                     context_slices=1, voxel_size_nm=voxel_size_nm)
    return LoadedModel(card, NeighbourNet().eval(), "cpu")


def save_neighbour_model(folder):
    """:func:`neighbour_model` as TorchScript with its card in ``folder``; returns the card path."""
    from panoptem.models.home import sha256_of
    w = folder / "neighbours.pt"
    torch.jit.save(torch.jit.script(NeighbourNet().eval()), str(w))
    card = neighbour_model().card.model_copy(update={"weights": Weights(file=w.name, sha256=sha256_of(w),
                                                                          format="torchscript")})
    path = folder / "neighbours.yaml"
    path.write_text(card.to_yaml())
    return path




class TwoClassNet(nn.Module):
    """A hand-set two-class network: dark pixels are class 1, grey ones class 2,
    bright ones background (channels: background, class 1, class 2); the centre
    heatmap is the blurred foreground, offsets are 0. Outputs at stride 4."""

    def forward(self, x):
        dark = (x < -1).float()                        # x is normalised: dark -2, grey 0, bright 2
        grey = ((x >= -1) & (x < 1)).float()
        frac = F.avg_pool2d(torch.cat([1 - dark - grey, dark, grey], 1), 4)
        fg = frac[:, 1:2] + frac[:, 2:3]
        blur = F.avg_pool2d(fg, 5, stride=1, padding=2, count_include_pad=False)
        return {"sem_logits": 20 * frac, "ctr_hmp": blur, "offsets": torch.zeros_like(fg).repeat(1, 2, 1, 1)}


TWO_CLASSES = ("mitochondria", "nucleus")


def two_class_card(second_kind: str = "instance", weights: str = "none") -> ModelCard:
    return ModelCard(name="twoclass", weights=Weights(file=weights, format="torchscript"), padding_factor=32,
                     label_divisor=1000, classes=[ClassInfo(id=1, name=TWO_CLASSES[0]),
                                                  ClassInfo(id=2, name=TWO_CLASSES[1], kind=second_kind)])


def two_class_model(second_kind: str = "instance") -> LoadedModel:
    return LoadedModel(two_class_card(second_kind), TwoClassNet().eval(), "cpu")


def save_two_class_model(folder, second_kind: str = "instance"):
    """The two-class network as TorchScript with its card in ``folder``; returns the card path."""
    from panoptem.models.home import sha256_of
    w = folder / "twoclass.pt"
    torch.jit.save(torch.jit.script(TwoClassNet().eval()), str(w))
    card = two_class_card(second_kind, weights=w.name)
    card.weights.sha256 = sha256_of(w)
    path = folder / "twoclass.yaml"
    path.write_text(card.to_yaml())
    return path
