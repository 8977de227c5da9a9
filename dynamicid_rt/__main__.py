"""``python -m dynamicid_rt``: the ``dynamicid-rt`` command line."""
import sys

from .cli import main

sys.exit(main())
