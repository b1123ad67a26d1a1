"""Deprecated re-export: this module moved to ``alignloop.stages.registry``; the old path works for one release."""

import sys
import warnings

from alignloop.stages import registry as _moved

warnings.warn("alignloop.train.registry moved to alignloop.stages.registry; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
