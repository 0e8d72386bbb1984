"""Pictures and reports of label images: previews of runs, HTML/PDF reports, evaluation reports.

Drawing needs matplotlib (``pip install 'panoptem[report]'``); without it these functions raise a
PanoptemError saying so.
"""
from ._draw import label_colors
from ._evalreport import evaluation_report
from ._preview import Preview, preview
from ._report import objects_per_slice, prepare_report, report

__all__ = ["preview", "Preview", "report", "evaluation_report", "objects_per_slice", "label_colors",
           "prepare_report"]
