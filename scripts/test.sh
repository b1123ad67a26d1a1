#!/usr/bin/env bash
# Run the test suite: start the services some tests need (PostgreSQL, Chromium), then pytest.
# Each test directory runs in its own pytest process (its files directly, not its subdirectories), so memory held
# by one directory's models is returned before the next: one process for the whole suite grew past 15 GB across
# ~450 model-heavy tests, and one process per file spent ~5 of CI's 30 minutes starting Python and torch ~110 times.
# The last line sums all groups.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .ci/feedback_services.sh ]; then
  # shellcheck disable=SC1091
  source .ci/feedback_services.sh
fi
results=$(mktemp -d)
rc=0
i=0
# Groups: tests/feedback, then the test files of each other directory (tests/ mirrors the package: tests/algos/,
# tests/stages/rl/, ...). ALIGNLOOP_TEST_FILES="a b c" runs each named file or directory as its own group instead.
groups=()
if [ -n "${ALIGNLOOP_TEST_FILES:-}" ]; then
  for target in $ALIGNLOOP_TEST_FILES; do groups+=("$target"); done
else
  groups+=("tests/feedback")
  for dir in $(find tests -name 'test_*.py' -not -path 'tests/feedback/*' -printf '%h\n' | sort -u); do
    groups+=("$(find "$dir" -maxdepth 1 -name 'test_*.py' | sort | tr '\n' ' ')")
  done
fi
for group in "${groups[@]}"; do
  i=$((i + 1))
  started=$(date +%s)
  echo "== $group"
  # the quickstart acceptance runs are deselected (see tests/test_quickstart.py); everything else runs, slow included
  # shellcheck disable=SC2086  # a group is a space-separated list of paths
  python3 -m pytest -q -m "not acceptance" --junitxml="$results/$i.xml" "$@" $group
  code=$?
  echo "== $(( $(date +%s) - started )) s"
  # 5 = nothing selected in this group (e.g. only slow tests under -m "not slow"): not a failure
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then rc=1; echo "!! $group failed (exit $code)"; fi
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
