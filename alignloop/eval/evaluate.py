"""Deprecated re-export: this module moved to ``alignloop.stages.evaluate.stage``; the old path works for one release."""

import sys
import warnings

from alignloop.stages.evaluate import stage as _moved

warnings.warn("alignloop.eval.evaluate moved to alignloop.stages.evaluate.stage; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
