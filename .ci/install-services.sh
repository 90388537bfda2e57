#!/usr/bin/env bash
# Installs the system packages `make demo` or `make test` need, when missing.
#   .ci/install-services.sh demo   what the demo runs: bubblewrap (the training sandbox), git (a DVC source)
#   .ci/install-services.sh        what the tests start too: PostgreSQL, Node.js/npm, Chromium
# As root with apt it installs them; otherwise it stops with one line naming the packages.
set -euo pipefail

profile=${1:-test}
need=()
why=()
command -v bwrap >/dev/null 2>&1 || { need+=(bubblewrap); why+=("bubblewrap: the sandbox training jobs run in"); }
command -v git >/dev/null 2>&1 || { need+=(git); why+=("git: the repository behind a DVC-sourced dataset"); }
if [ "$profile" != demo ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { need+=(postgresql); why+=("postgresql: the database tests"); }
  command -v npm >/dev/null 2>&1 || { need+=(nodejs npm); why+=("nodejs npm: solc and anvil"); }
  command -v chromium >/dev/null 2>&1 || { need+=(chromium); why+=("chromium: the browser tests"); }
fi

if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  reasons=$(IFS=';'; echo "${why[*]}")
  echo "error: install the Debian package(s) ${need[*]} first (${reasons//;/; }); run as root with apt to have them installed" >&2
  exit 1
fi
echo "installing ${need[*]} …" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
  echo "error: apt-get could not install ${need[*]}" >&2
  exit 1
fi
