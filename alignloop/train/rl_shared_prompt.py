"""Deprecated re-export: this module moved to ``alignloop.stages.rl.shared_prompt``; the old path works for one release."""

import sys
import warnings

from alignloop.stages.rl import shared_prompt as _moved

warnings.warn("alignloop.train.rl_shared_prompt moved to alignloop.stages.rl.shared_prompt; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
