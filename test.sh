#!/usr/bin/env bash
# Install the project with its test extras (and Debian's Chromium for the browser test), run the tests.
# The tests fetch the models they need into ~/.cache/llamafile (or $LLAMAFILE_CACHE) on first use.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q -e '.[test]'
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null
fi
python3 -m pytest -q "$@"
