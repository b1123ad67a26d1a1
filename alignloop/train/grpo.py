"""Deprecated re-export: this module moved to ``alignloop.stages.rl.grpo``; the old path works for one release."""

import sys
import warnings

from alignloop.stages.rl import grpo as _moved

warnings.warn("alignloop.train.grpo moved to alignloop.stages.rl.grpo; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
