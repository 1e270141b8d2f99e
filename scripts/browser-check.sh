#!/usr/bin/env bash
# The HTML page in a real browser: start the JSON example's server, put some load on it, load
# /debug/hogs in headless Chromium, and check the DOM and a screenshot.
#
#   scripts/browser-check.sh [screenshot.png]
#
# Checks: the blocking route is the first row; a custom label made of HTML and script shows as
# text and none of its script ran; the page's own script did run under the endpoint's
# Content-Security-Policy (it shows the refresh control) and the browser reported no CSP
# violation (a style or script whose hash the policy does not list); the screenshot is a
# non-empty PNG.
set -euo pipefail
cd "$(dirname "$0")/.."
screenshot=${1:-}
# 0: the server picks a free port and prints it (a fixed one could be taken on a shared machine).
port=${PORT:-0}
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "chromium is missing: install it with 'apt-get install chromium' (Debian package chromium)" >&2
  exit 1
fi
command -v curl >/dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 1; }

# If this label's markup were not escaped, its script (or the image's onerror) would mark the
# document; the check below looks for that mark.
hostile='<script>document.documentElement.setAttribute("data-pwned","script")</script><img src=x onerror="document.documentElement.setAttribute(&quot;data-pwned&quot;,&quot;img&quot;)">'

cargo build --release --example json_service -q
target/release/examples/json_service serve --port "$port" --extra-label "$hostile" \
  >"$work/server.log" 2>&1 &
server=$!
base=
for _ in $(seq 1 300); do
  base=$(grep -o 'serving on http://[0-9.:]*' "$work/server.log" | head -1 | cut -d' ' -f3 || true)
  [ -n "$base" ] && curl -fs --max-time 5 "$base/health" >/dev/null 2>&1 && break
  sleep 0.1
done
if [ -z "$base" ] || ! curl -fs --max-time 5 "$base/health" >/dev/null 2>&1; then
  cat "$work/server.log" >&2
  echo "browser check FAILED: the json_service server did not come up" >&2
  exit 1
fi

echo "load: 20 x /blocking/big, 50 x /passthrough/big, 20 x /offload/small, 20 x /health" >&2
for _ in $(seq 1 20); do curl -fs --max-time 120 "$base/blocking/big" -o /dev/null & done
for _ in $(seq 1 50); do curl -fs --max-time 120 "$base/passthrough/big" -o /dev/null & done
for _ in $(seq 1 20); do curl -fs --max-time 120 "$base/offload/small" -o /dev/null & done
for _ in $(seq 1 20); do curl -fs --max-time 120 "$base/health" -o /dev/null & done
wait $(jobs -p | grep -v "^$server$") 2>/dev/null || true

# A hung browser fails the check rather than the whole CI job.
chrome() {
  timeout 120 "$browser" --headless --no-sandbox --disable-gpu --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --disable-quic \
    --user-data-dir="$work/profile-$1" "${@:2}" 2>>"$work/chromium.log"
}
page="$base/debug/hogs?format=html"
# --virtual-time-budget lets the page's own script (the refresh control) run before the dump.
# --enable-logging: console messages, CSP violations among them, go to chromium.log.
chrome dom --enable-logging=stderr --v=0 --virtual-time-budget=3000 --dump-dom "$page" \
  >"$work/dom.html"
chrome shot --window-size=1280,900 --hide-scrollbars --screenshot="$work/page.png" "$page" >/dev/null

python3 - "$work/dom.html" "$work/page.png" "$work/chromium.log" <<'PY'
import re, sys
dom = open(sys.argv[1], encoding="utf-8").read()
png = open(sys.argv[2], "rb").read()
log = open(sys.argv[3], encoding="utf-8", errors="replace").read()
failures = []
controls = re.search(r'<div[^>]*id="hw-controls"[^>]*>', dom)
if not controls or "hidden" in controls.group(0):
    failures.append(f"the page's own script did not run (refresh control: {controls and controls.group(0)})")
violations = [line for line in log.splitlines() if "Content Security Policy" in line]
if violations:
    failures.append("CSP violations:\n    " + "\n    ".join(violations[:5]))
rows = re.findall(r'<details class="entry[^"]*" data-key="([^"]*)"', dom)
if not rows:
    failures.append("no rows in the page")
elif rows[0] != "GET /blocking/{key}":
    failures.append(f"first row is {rows[0]!r}, expected 'GET /blocking/{{key}}' (rows: {rows})")
if "data-pwned" in dom.split("<body", 1)[0] or re.search(r'<html[^>]*data-pwned', dom):
    failures.append("a script from the label ran: the document carries data-pwned")
if "&lt;script&gt;document.documentElement" not in dom:
    failures.append("the hostile label is not shown as escaped text")
if not (png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000):
    failures.append(f"the screenshot is not a real PNG ({len(png)} bytes)")
print(f"rows: {rows}")
print(f"screenshot: {len(png)} bytes")
if failures:
    print("browser check FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("browser check passed: blocking route first, label escaped, no script ran, "
      "the page's own script ran under its CSP, PNG ok")
PY
if [ -n "$screenshot" ]; then cp "$work/page.png" "$screenshot"; fi
