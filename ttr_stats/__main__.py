"""``python -m ttr_stats``: the ``ttr-stats`` command (:mod:`ttr_stats.cli`)."""

import sys

from .cli import main

sys.exit(main())
