#!/bin/bash
# SPDX-License-Identifier: MIT
# examples/quantd-dbus-client.py (GDBus, python3-gi) against quantd --user on the private session bus of
# dbus-run-session: it lists the models, streams the same text as a non-streamed Generate, and reports errors
# by their D-Bus names. TAP output.
# Usage: dbus-run-session -- test-dbus-example.sh QUANTD DBUS_TEST_TOOL EXAMPLE
set -u

quantd=$1
tool=$2
example=$3
python=/usr/bin/python3 # Debian's, where python3-gi lives
n=0
failed=0
tmp=$(mktemp -d /tmp/quantd-dbus-example-XXXXXX)
quantd_pid=
cleanup() {
        [ -n "$quantd_pid" ] && kill "$quantd_pid" 2>/dev/null && wait "$quantd_pid" 2>/dev/null
        rm -rf "$tmp"
}
trap cleanup EXIT

ok() {
        n=$((n + 1))
        echo "ok $n - $1"
}
not_ok() {
        n=$((n + 1))
        failed=1
        echo "not ok $n - $1"
        [ $# -gt 1 ] && printf '%s\n' "$2" | sed 's/^/# /'
}

XDG_RUNTIME_DIR=$tmp XDG_CONFIG_HOME=$tmp "$quantd" --user --backend=fake --socket="$tmp/sock" \
        --models="$tmp/models" 2>"$tmp/quantd.log" &
quantd_pid=$!
for _ in $(seq 100); do busctl --user status org.quantd.Quantd1 >/dev/null 2>&1 && break; sleep 0.1; done
printf 'size=1000\n' >"$tmp/fake.model"
"$tool" create stories "$tmp/fake.model" >/dev/null

out=$("$python" "$example" 2>&1)
case $out in
"stories:latest "*[0-9]" bytes") ok "the example lists the models" ;;
*) not_ok "the example lists the models" "$out" ;;
esac

out=$("$python" "$example" --num-predict 30 stories "Once upon a time" 2>&1)
streamed=$(printf '%s\n' "$out" | sed -n 2p)
stats=$(printf '%s\n' "$out" | sed -n 3p)
expected=$(busctl --user --json=short call org.quantd.Quantd1 /org/quantd/Quantd1 org.quantd.Quantd1.Manager \
        Generate 'ssa{sv}' stories "Once upon a time" 2 stream b false options 'a{sv}' 1 num_predict x 30 |
        "$python" -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["response"]["data"])')
if [ -n "$streamed" ] && [ "$streamed" = "$expected" ]; then
        ok "the example streams the text of the generation (${#streamed} characters)"
else not_ok "the example streams the text of the generation" "got '$streamed', expected '$expected'"; fi
case $stats in
"30 tokens (length), "*" tokens/s") ok "the example prints the statistics of the reply" ;;
*) not_ok "the example prints the statistics of the reply" "$out" ;;
esac

out=$("$python" "$example" stories-missing 2>&1)
rc=$?
case $out in
*"org.quantd.Quantd1.Error.NotFound: Model 'stories-missing:latest' not found; 'qctl list' shows the local models."*)
        [ $rc = 1 ] && ok "the example reports an error by its name" || not_ok "exit status 1" "$rc" ;;
*) not_ok "the example reports an error by its name" "$out" ;;
esac

echo "1..$n"
exit $failed
