"""Dataset readers: raw NIfTI on disk -> :class:`~mmldm.data.schema.Case` -> ``Volume``.

One module per layout (``mnms2``, ``mnms``, ``acdc``), each with the same four functions:
``is_subject_folder``, ``subject_folders``, ``find_cases(root)`` and ``load_case(case)``.
``layout`` recognises which one a folder holds and dispatches; most code needs only::

    from mmldm.data.readers import find_cases, load_case
"""

from mmldm.data.readers.layout import FORMATS, detect_format, find_cases, load_case

__all__ = ["FORMATS", "detect_format", "find_cases", "load_case"]
