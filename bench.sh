#!/usr/bin/env bash
# Install what the benchmarks need (./.venv, and as root Debian's nginx-light) and run them all;
# writes docs/bench/results.md and the charts (the committed results: this is how to refresh them).
#   ./bench.sh            the full run (about 5 minutes on 2 cores): docs/bench/
#   ./bench.sh --quick    a smoke run (1-2 minutes): build/bench/ (git-ignored), docs/ left alone
#   ./bench.sh --profile  cProfile of a turn, store traffic, py-spy during a burst: docs/bench/profiles.md
#   ./bench.sh --hosts    two hosts on one Redis: a reply followed from the other host, and Stop
#                         pressed there (about a minute): docs/bench/hosts.md
#   ./bench.sh --ab REV [streamed|nojs] [ROUNDS]
#                         the 1,000-turn burst, the app at git revision REV against this tree and
#                         the floor, rounds interleaved (about 3 minutes a round): printed only
#   ./bench.sh --inprocess [streamed|nojs] [--pace S] [--profile app|floor] [--at-once K]
#                         the app against the floor in one process, turn by turn alternated (under a
#                         minute; steadier than the bursts for a change of a few per cent): printed only
#   ./bench.sh --peer     Gradio's ChatInterface on the same fake upstream, side by side (its own venv
#                         in build/peer-venv): docs/bench/peer.md
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! PATH="$PATH:/usr/sbin:/sbin" command -v nginx >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt -r bench/requirements.txt
case "${1:-}" in
  --profile) shift; exec .venv/bin/python -m bench.profile "$@" ;;
  --hosts) shift; exec .venv/bin/python -m bench.hosts "$@" ;;
  --ab) shift; exec .venv/bin/python -m bench.ab "$@" ;;
  --inprocess) shift; exec .venv/bin/python -m bench.inprocess "$@" ;;
  --peer)
    shift
    [ -x build/peer-venv/bin/python ] || "$PY" -m venv build/peer-venv
    build/peer-venv/bin/pip install -q --disable-pip-version-check -r bench/peer-requirements.txt
    exec .venv/bin/python -m bench.peer "$@" ;;
esac
exec .venv/bin/python -m bench.run "$@"
