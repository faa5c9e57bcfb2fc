"""zinfer model toolkit: turn a pretrained transformer into the small int8 classifier that zinferd serves.

Steps (see `python -m zinfer_model --help`): teacher → shrink → vocab → prune → quantize → evaluate →
export-shipped, driven by a TOML recipe. Nothing is downloaded at run time: the teacher weights and the data come
from installed packages (see `zinfer_model.data`).
"""

import os

# Offline and quiet before transformers/tokenizers are imported anywhere in the package.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
