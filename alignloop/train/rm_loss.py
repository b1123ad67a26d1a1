"""Deprecated re-export: this module moved to ``alignloop.stages.rm.loss``; the old path works for one release."""

import sys
import warnings

from alignloop.stages.rm import loss as _moved

warnings.warn("alignloop.train.rm_loss moved to alignloop.stages.rm.loss; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
