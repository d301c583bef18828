#!/usr/bin/env bash
# Renders the bench board's screen, as the e2e board test keeps it with its colours
# (target/tmp/board-screens/done.ansi.txt), to docs/screenshots/board.png: aha (Debian `aha`)
# turns the terminal escapes into HTML, headless Chromium takes the picture.
#
#   docs/screenshots/board.sh [SCREEN.ansi.txt] [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/../.."
in=${1:-target/tmp/board-screens/done.ansi.txt}
out=${2:-docs/screenshots/board.png}
html=$(mktemp --suffix=.html)
trap 'rm -f "$html"' EXIT
aha --black --title "tek board" <"$in" |
  sed 's|<pre>|<pre style="font: 12px/1.0 DejaVu Sans Mono, monospace; margin: 6px">|' >"$html"
chromium --headless --no-sandbox --hide-scrollbars --window-size=1030,530 \
  --screenshot="$PWD/$out" "file://$html" 2>/dev/null
echo "wrote $out"
