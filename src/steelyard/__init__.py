__version__ = "0.1.0"

# Before any submodule is imported: the compiled data path, or its Python sources (_native.py).
from steelyard._native import BUILD as BUILD  # noqa: E402
