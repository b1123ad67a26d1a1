"""utils.lazy.LazyModule: nothing is imported until an attribute is read."""

from __future__ import annotations

import subprocess
import sys

from alignloop.utils.lazy import LazyModule


def test_lazy_module_imports_on_first_attribute():
    colorsys = LazyModule("colorsys")
    assert "not imported yet" in repr(colorsys)
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "imported" in repr(colorsys) and "not" not in repr(colorsys)


def test_loading_jsonl_records_does_not_import_datasets(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "hi", "completion": "there"}\n')
    code = ("import sys; from alignloop.data import load_records; "
            f"records = list(load_records({str(path)!r}, 'sft')); "
            "print(len(records), 'datasets' in sys.modules, 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "False", "False"]
