"""``python -m mmldm <stage>``: see :mod:`mmldm.cli`."""

from mmldm.cli import main

raise SystemExit(main())
