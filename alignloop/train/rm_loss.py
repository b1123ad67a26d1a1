"""Deprecated re-export: this module moved to ``alignloop.stages.rm.loss``
(the old path works for one release)."""

import sys
import warnings

from alignloop.stages.rm import loss as _moved

warnings.warn(f"{__name__} moved to {_moved.__name__}; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
