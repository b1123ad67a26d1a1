"""Deprecated re-export: this module moved to ``alignloop.stages.dpo.data``
(the old path works for one release)."""

import sys
import warnings

from alignloop.stages.dpo import data as _moved

warnings.warn(f"{__name__} moved to {_moved.__name__}; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
