"""Deprecated re-export: this module moved to ``alignloop.stages.rl.source``; the old path works for one release."""

import sys
import warnings

from alignloop.stages.rl import source as _moved

warnings.warn("alignloop.train.rl_source moved to alignloop.stages.rl.source; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
