#!/usr/bin/env bash
# Run the test suite: start the services some tests need (PostgreSQL, Chromium), then pytest.
# Each test file runs in its own pytest process, so memory held by one file's models is returned before the
# next (one long process grew past 15 GB across ~450 model-heavy tests). The last line sums all files.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .ci/feedback_services.sh ]; then
  # shellcheck disable=SC1091
  source .ci/feedback_services.sh
fi
results=$(mktemp -d)
rc=0
i=0
# Default targets: tests/feedback as one target, then every other test file,
# found recursively (tests/ mirrors the package: tests/algos/, tests/stages/rl/, ...).
default_targets="tests/feedback $(find tests -name 'test_*.py' -not -path 'tests/feedback/*' | sort | tr '\n' ' ')"
for target in ${ALIGNLOOP_TEST_FILES:-$default_targets}; do
  i=$((i + 1))
  echo "== $target"
  # the quickstart acceptance runs are deselected (see tests/test_quickstart.py); everything else runs, slow included
  python3 -m pytest -q -m "not acceptance" --junitxml="$results/$i.xml" "$@" "$target"
  code=$?
  # 5 = nothing selected in this file (e.g. only slow tests under -m "not slow"): not a failure
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then rc=1; echo "!! $target failed (exit $code)"; fi
done
python3 - "$results" <<'PY'
import sys, glob, xml.etree.ElementTree as ET
t = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for f in glob.glob(sys.argv[1] + "/*.xml"):
    root = ET.parse(f).getroot()
    for s in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for k in t:
            t[k] += int(s.get(k, 0))
failed = t["failures"] + t["errors"]
print(f"{t['tests'] - failed - t['skipped']} passed, {failed} failed, {t['skipped']} skipped")
PY
rm -rf "$results"
exit "$rc"
