#!/usr/bin/env bash
# A Chromium for the browser test (tests/serve/test_browser.py): nothing to do when one is on PATH,
# else Debian's `chromium` package through apt-get (with sudo when not root).
set -euo pipefail

for name in chromium chromium-browser google-chrome; do
  if found=$(command -v "$name"); then
    echo "chromium: using $found"
    exit 0
  fi
done

if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null; then
  sudo="sudo"
else
  echo "install_chromium.sh: no chromium on PATH and no root or sudo to install Debian's 'chromium';" \
       "install it (or Google Chrome) yourself, or the browser test is skipped" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "install_chromium.sh: no chromium on PATH and no apt-get; install chromium with your package manager" >&2
  exit 1
fi

echo "chromium: installing Debian's chromium with apt-get"
$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
command -v chromium >/dev/null || { echo "install_chromium.sh: apt-get ran but no chromium is on PATH" >&2; exit 1; }
echo "chromium: installed $(command -v chromium)"
