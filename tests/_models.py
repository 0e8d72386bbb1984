"""Small hand-set models for tests (no training, no download)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from panoptem.models.card import ModelCard, Weights
from panoptem.models.load import LoadedModel


class DarkBlobNet(nn.Module):
    """A hand-set network with a small receptive field: dark pixels are
    foreground, the centre heatmap is a blurred darkness map, offsets are 0.
    Outputs at stride 4, like the real networks."""

    def forward(self, x):
        dark = F.relu(-x - 0.5)                       # x is normalised: dark < 0
        d4 = F.avg_pool2d(dark, 4)
        blur = F.avg_pool2d(d4, 5, stride=1, padding=2, count_include_pad=False)
        return {"sem_logits": 20 * (d4 - 0.75), "ctr_hmp": blur,
                "offsets": torch.zeros_like(d4).repeat(1, 2, 1, 1)}


def dark_blob_model():
    card = ModelCard(name="darkblob", weights=Weights(file="none"), padding_factor=32, label_divisor=None)
    return LoadedModel(card, DarkBlobNet().eval(), "cpu")


