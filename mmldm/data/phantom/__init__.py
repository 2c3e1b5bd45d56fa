"""The synthetic phantom: cine-MRI-like subjects written in the M&Ms-2 file layout, so that a
fresh machine without real data runs every stage.

    writer.py      write_phantom(out, subjects): the dataset folder (NIfTI + CSV), one subject at a time
    heart.py       a subject's heart: LV, myocardium and RV per disease, phase and slice position
    shapes.py      the 2-D shape primitives the anatomy is drawn with
    short_axis.py  one short-axis stack rendered from the anatomy
    long_axis.py   one 4-chamber long-axis slice rendered from the anatomy
    torso.py       the body around the heart: chest wall, lungs, liver, fat
    mri.py         MR appearance: tissue layers -> a balanced-SSFP cine magnitude image
"""

from mmldm.data.phantom.writer import (
    CASES,
    CSV_COLUMNS,
    SETTINGS,
    render_subject,
    subject_files,
    subject_info,
    write_phantom,
)

__all__ = ["CASES", "CSV_COLUMNS", "SETTINGS", "render_subject", "subject_files", "subject_info", "write_phantom"]
