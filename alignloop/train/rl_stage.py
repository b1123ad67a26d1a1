"""Deprecated re-export: this module moved to ``alignloop.stages.rl.stage``; the old path works for one release."""

import sys
import warnings

from alignloop.stages.rl import stage as _moved

warnings.warn("alignloop.train.rl_stage moved to alignloop.stages.rl.stage; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
