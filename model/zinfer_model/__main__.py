"""`python -m zinfer_model …` (see zinfer_model.cli)."""

from .cli import main

raise SystemExit(main())
