"""Deprecated re-export: this module moved to ``alignloop.stages.evaluate.sampling``; the old path works for one release."""

import sys
import warnings

from alignloop.stages.evaluate import sampling as _moved

warnings.warn("alignloop.eval.eval_sampling moved to alignloop.stages.evaluate.sampling; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
