#!/usr/bin/env bash
# pytest, except that "no tests collected" (exit 5) is not a failure of the suite.
pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest: no tests were selected (exit 5); treated as success"
  exit 0
fi
exit "$rc"
