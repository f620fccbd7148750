"""Load ``segment_anything.modeling`` without running ``segment_anything/__init__.py``.

Why: that ``__init__`` imports ``SamPredictor``, whose resize transforms import torchvision, which
imports ``torch._dynamo`` (torchvision.ops). That is ~1.8 s of CPU per process (``python -X
importtime -c "import segment_anything"`` here: 1.77 s of samsp's 4.0 s import), paid again by
every Ray actor and by the local engine before its first tile -- and samsp uses only the
``modeling`` subpackage (SAM's nn.Modules).

How: :func:`defer_package_init` registers the package module (``__path__`` and all, so its
subpackages import normally) without executing its body. The first access to a name the body
defines (``segment_anything.SamPredictor``, ``from segment_anything import sam_model_registry``)
executes it then, so user code sees the ordinary package.
"""
from __future__ import annotations

import importlib.util
import sys
import threading

PACKAGE = "segment_anything"


def defer_package_init(name: str = PACKAGE) -> bool:
    """Register ``name`` with its ``__init__`` deferred to first attribute access.

    Returns True if it did; False when the package is already imported (nothing to save) or not
    installed (the caller's own import then fails with Python's usual error).
    """
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    module = importlib.util.module_from_spec(spec)
    lock = threading.RLock()
    state = {"executed": False}

    def __getattr__(attr: str):
        # Only called for names not (yet) in the module: run the package body once, then look
        # again. During that run, lookups of names it has not defined yet fail as they would in
        # any partially initialised module.
        with lock:
            if not state["executed"]:
                state["executed"] = True
                spec.loader.exec_module(module)
        try:
            return module.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    module.__getattr__ = __getattr__  # PEP 562
    sys.modules[name] = module
    return True
