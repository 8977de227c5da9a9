"""``python -m dynamicid_rt.cli``: the ``dynamicid-rt`` command line."""
import sys

from . import main

sys.exit(main())
