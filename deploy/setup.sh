#!/usr/bin/env bash
# Sets up seqstream on this machine, idempotently: a Python 3.11 venv under the cache (torch
# is large: it is installed once per machine and reused), the package in editable mode, and
# the Kafka broker jars from Maven Central, and Debian's chromium + chromium-driver for the
# dashboard's browser test (as root with apt-get; SEQSTREAM_NO_CHROMIUM=1 skips it). Safe to run
# again; it only adds what is missing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SEQSTREAM_CACHE:-$HOME/.cache/seqstream}"
venv="$cache/venv"
python="${PYTHON:-python3.11}"

command -v "$python" >/dev/null || { echo "setup: $python not found (seqstream needs Python 3.11)" >&2; exit 1; }
command -v java >/dev/null || { echo "setup: java not found (the embedded broker needs Java 17)" >&2; exit 1; }
command -v mvn >/dev/null || { echo "setup: mvn not found (Maven fetches the broker jars)" >&2; exit 1; }

mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
# pip leaves satisfied requirements (torch included) alone, so this is quick after the first run
echo "setup: installing seqstream and its dependencies into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e "$repo[test]"
echo "setup: fetching the Kafka broker jars (once per machine)"
"$venv/bin/python" -c "from stream.broker.install import ensure_jars; print('setup: broker jars in', ensure_jars())"
# The dashboard test drives a real headless Chromium: Debian's, with the chromedriver of the same
# build (Selenium's and Playwright's own browser downloads do not work offline).
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  :  # already there: nothing to do
elif [ "${SEQSTREAM_NO_CHROMIUM:-0}" = "1" ]; then
  echo "setup: SEQSTREAM_NO_CHROMIUM=1: not installing chromium (the dashboard browser test will skip)"
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's chromium and chromium-driver (for the dashboard browser test)"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
else
  echo "setup: chromium not found; the dashboard browser test will skip. To run it:" \
       "sudo apt-get install chromium chromium-driver" >&2
fi
echo "setup: done. Use $venv/bin/seqstream"
