"""`python -m zinfer_model.bench ...`: the same as `python -m zinfer_model bench ...`."""

import sys

from . import main

sys.exit(main(sys.argv[1:], prog="python -m zinfer_model.bench"))
