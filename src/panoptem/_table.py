"""Tables (dicts of equal-length columns) to CSV, Excel or Parquet files."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .errors import PanoptemError


#: the file names a table may take (CSV, Excel, Parquet)
TABLE_SUFFIXES = (".csv", ".xlsx", ".parquet")


def check_table_name(path) -> Path:
    """``path`` (``~`` expanded) where it names a table file; else one error saying which names do."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise PanoptemError(f"Cannot write the table to '{path.name}': give a file name ending in "
                            f"{', '.join(TABLE_SUFFIXES)}.")
    return path


def write_table(table: dict[str, np.ndarray], path, inputs=(), replace_folder: bool = False,
                overwrite: bool = True) -> Path:
    """Write the table as CSV (``.csv``), as an Excel workbook when ``path`` ends in ``.xlsx``
    (header row, then one row per object), or as Parquet for ``.parquet`` (needs
    pyarrow); returns the path. Another suffix, or a path that is one of ``inputs`` (the files
    measured), is refused: a table never takes the place of an image or labels file; nor of a
    folder (a Parquet dataset, say) unless ``replace_folder`` (the command line's --overwrite).
    ``overwrite=False``: a file at ``path`` is refused, one another run wrote meanwhile too.

    The file is written to a temporary name first and then renamed, so a crash never leaves a
    half-written table. Floats keep full precision.
    """
    path = check_table_name(path)
    if path.is_dir() and not replace_folder:
        raise PanoptemError(f"{path} is a folder; a table is one file: choose another name for it.")
    from ._atomic import check_output, existing_folder
    check_output(path, overwrite=overwrite, inputs=[i for i in inputs if i])
    existing_folder(path.parent, "the table")
    if any(np.ndim(v) != 1 for v in table.values()):
        raise PanoptemError("A table is columns of values: give each column as a list or 1D array "
                            "(one value per row).")
    lengths = {len(np.asarray(v)) for v in table.values()}
    if len(lengths) > 1:
        raise PanoptemError("The table's columns have different lengths; "
                            "give one value per row in every column.")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise PanoptemError("Parquet tables need pyarrow, which is not installed; install it with: "
                                "pip install pyarrow (or write a .csv table).") from None
        with atomic_path(path, suffix=".tmp", replace=overwrite) as tmp:
            pq.write_table(pa.table({k: np.asarray(v) for k, v in table.items()}), str(tmp))
        return path
    rows = list(zip(*(np.asarray(v).tolist() for v in table.values())))
    if path.suffix.lower() == ".xlsx":
        with atomic_path(path, suffix=".tmp", replace=overwrite) as tmp:
            _write_xlsx(tmp, list(table), rows)
        return path
    with atomic_path(path, suffix=".tmp", replace=overwrite) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(table))
        w.writerows(rows)
    return path


def _xlsx_column(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA."""
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(65 + r) + name
    return name


def _write_xlsx(path, header: list[str], rows: list[tuple]) -> None:
    """A one-sheet Office Open XML workbook: strings inline, numbers as numbers."""
    import zipfile
    from xml.sax.saxutils import escape

    def cell(ref: str, v) -> str:
        if isinstance(v, (bool, np.bool_)):
            return f'<c r="{ref}" t="b"><v>{int(v)}</v></c>'
        if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v):
            return f'<c r="{ref}"><v>{repr(float(v)) if isinstance(v, (float, np.floating)) else int(v)}</v></c>'
        return f'<c r="{ref}" t="inlineStr"><is><t>{escape(str(v))}</t></is></c>'

    lines = []
    for r, values in enumerate([tuple(header), *rows], start=1):
        cells = "".join(cell(f"{_xlsx_column(c)}{r}", v) for c, v in enumerate(values))
        lines.append(f'<row r="{r}">{cells}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    files = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            '</Types>'),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/>'
            '</Relationships>'),
        "xl/workbook.xml": (
            f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook {ns} xmlns:r="{rel}">'
            '<sheets><sheet name="table" sheetId="1" r:id="rId1"/></sheets></workbook>'),
        "xl/_rels/workbook.xml.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/>'
            '</Relationships>'),
        "xl/worksheets/sheet1.xml": (
            f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet {ns}><sheetData>'
            + "".join(lines) + '</sheetData></worksheet>'),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
