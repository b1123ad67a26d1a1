"""Deprecated re-export: this module moved to ``alignloop.stages.prm``; the old path works for one release."""

import sys
import warnings

from alignloop.stages import prm as _moved

warnings.warn("alignloop.train.prm moved to alignloop.stages.prm; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
