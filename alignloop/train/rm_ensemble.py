"""Deprecated re-export: this module moved to ``alignloop.stages.rm.ensemble``; the old path works for one release."""

import sys
import warnings

from alignloop.stages.rm import ensemble as _moved

warnings.warn("alignloop.train.rm_ensemble moved to alignloop.stages.rm.ensemble; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
