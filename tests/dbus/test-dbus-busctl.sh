#!/bin/bash
# SPDX-License-Identifier: MIT
# quantd --user on the private session bus of dbus-run-session, seen through busctl: the interfaces it
# introspects are the installed XML files member for member, List and Generate work from busctl call, the
# properties read, and errors reach busctl as sentences. TAP output.
# Usage: dbus-run-session -- test-dbus-busctl.sh QUANTD DBUS_TEST_TOOL DBUS_SOURCE_DIR
set -u

quantd=$1
tool=$2
src=$3
n=0
failed=0
tmp=$(mktemp -d /tmp/quantd-dbus-busctl-XXXXXX)
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
manager() {
        echo org.quantd.Quantd1 /org/quantd/Quantd1 org.quantd.Quantd1.Manager
}

XDG_RUNTIME_DIR=$tmp XDG_CONFIG_HOME=$tmp "$quantd" --user --backend=fake --socket="$tmp/sock" \
        --models="$tmp/models" 2>"$tmp/quantd.log" &
quantd_pid=$!
for _ in $(seq 100); do busctl --user status org.quantd.Quantd1 >/dev/null 2>&1 && break; sleep 0.1; done

# One line per member: "method NAME ARG:TYPE:DIRECTION ...", "property NAME TYPE ACCESS", "signal NAME ARG:TYPE ..."
members() {
        local xml=$1 iface=$2 kind name i count line attr
        local base="/node/interface[@name='$iface']"
        for kind in method property signal; do
                for name in $(xmllint --nonet --xpath "$base/$kind/@name" "$xml" 2>/dev/null |
                        sed 's/ name="\([^"]*\)"/\1\n/g'); do
                        if [ "$kind" = property ]; then
                                line="property $name"
                                for attr in type access; do
                                        line="$line $(xmllint --nonet --xpath \
                                                "string($base/property[@name='$name']/@$attr)" "$xml")"
                                done
                        else
                                line="$kind $name"
                                count=$(xmllint --nonet --xpath "count($base/$kind[@name='$name']/arg)" "$xml")
                                for i in $(seq "$count"); do
                                        line="$line $(xmllint --nonet --xpath \
                                                "string($base/$kind[@name='$name']/arg[$i]/@name)" "$xml")"
                                        line="$line:$(xmllint --nonet --xpath \
                                                "string($base/$kind[@name='$name']/arg[$i]/@type)" "$xml")"
                                        line="$line:$(xmllint --nonet --xpath \
                                                "string($base/$kind[@name='$name']/arg[$i]/@direction)" "$xml")"
                                done
                        fi
                        echo "$line"
                done
        done | sort
}

busctl --user introspect --xml-interface org.quantd.Quantd1 /org/quantd/Quantd1 >"$tmp/live.xml" 2>&1
members "$tmp/live.xml" org.quantd.Quantd1.Manager >"$tmp/live.txt"
members "$src/org.quantd.Quantd1.Manager.xml" org.quantd.Quantd1.Manager >"$tmp/file.txt"
if [ -s "$tmp/live.txt" ] && diff -u "$tmp/file.txt" "$tmp/live.txt" >"$tmp/diff"; then
        ok "busctl introspect shows org.quantd.Quantd1.Manager as its XML file says ($(wc -l <"$tmp/live.txt") members)"
else
        not_ok "busctl introspect shows org.quantd.Quantd1.Manager as its XML file says" "$(cat "$tmp/diff" "$tmp/live.xml")"
fi

busctl --user introspect --xml-interface org.quantd.Quantd1 /org/quantd/Quantd1/request/7 >"$tmp/live-request.xml" 2>&1
members "$tmp/live-request.xml" org.quantd.Quantd1.Request >"$tmp/live-request.txt"
members "$src/org.quantd.Quantd1.Request.xml" org.quantd.Quantd1.Request >"$tmp/file-request.txt"
if [ -s "$tmp/live-request.txt" ] && diff -u "$tmp/file-request.txt" "$tmp/live-request.txt" >"$tmp/diff"; then
        ok "a request's path shows org.quantd.Quantd1.Request as its XML file says"
else
        not_ok "a request's path shows org.quantd.Quantd1.Request as its XML file says" "$(cat "$tmp/diff")"
fi

out=$(busctl --user call $(manager) List 'a{sv}' 0 2>&1)
if [ "$out" = 'a{sv} 1 "models" av 0' ]; then ok "busctl call List: an empty store"
else not_ok "busctl call List: an empty store" "$out"; fi

printf 'size=1000\n' >"$tmp/fake.model"
"$tool" create stories "$tmp/fake.model" >/dev/null 2>&1
out=$(busctl --user call $(manager) List 'a{sv}' 0 2>&1)
case $out in
'a{sv} 1 "models" av 1 a{sv} 4 "name" s "stories:latest" "size" x '*' "modified_at" x '*' "digest" s "sha256:'*'"')
        ok "busctl call List: the model created from a descriptor" ;;
*) not_ok "busctl call List: the model created from a descriptor" "$out" ;;
esac

out=$(busctl --user --timeout=60 call $(manager) Generate 'ssa{sv}' stories "Once upon a time" 2 \
        stream b false options 'a{sv}' 2 num_predict x 12 temperature d 0 2>&1)
case $out in
*'"response" s "'*'"eval_count" x 12 '*'"done_reason" s "length"'* | \
        *'"done_reason" s "length"'*'"eval_count" x 12 '*'"response" s "'*)
        ok "busctl call Generate: 12 tokens and the statistics" ;;
*) not_ok "busctl call Generate: 12 tokens and the statistics" "$out" ;;
esac

out=$(busctl --user get-property $(manager) Version Backends 2>&1)
if [ "$out" = "$(printf 's "%s"\nas 1 "cpu"' "$("$quantd" --version | sed -n 's/^quantd //p')")" ] ||
        [ "$out" = "$(printf 's "%s"\nas 2 "cpu" "cuda"' "$("$quantd" --version | sed -n 's/^quantd //p')")" ]; then
        ok "busctl get-property Version Backends"
else not_ok "busctl get-property Version Backends" "$out"; fi

out=$(busctl --user get-property $(manager) LoadedModels 2>&1)
case $out in
'aa{sv} 1 '*'"name" s "stories'*'"in_use" x 0'*) ok "busctl get-property LoadedModels: the model Generate loaded" ;;
*) not_ok "busctl get-property LoadedModels: the model Generate loaded" "$out" ;;
esac

out=$(busctl --user call $(manager) Tokenize 'ssa{sv}' stories "Hé" 0 2>&1)
back=$(busctl --user call $(manager) Detokenize 'saia{sv}' stories 3 72 195 169 0 2>&1)
if [ "$out" = 'a{sv} 1 "tokens" av 3 x 72 x 195 x 169' ] && [ "$back" = 'a{sv} 1 "text" s "H\303\251"' ]; then
        ok "busctl call Tokenize and Detokenize (ai) round-trip"
else not_ok "busctl call Tokenize and Detokenize (ai) round-trip" "$out / $back"; fi

out=$(busctl --user call $(manager) Jobs 'a{sv}' 0 2>&1)
case $out in
'a{sv} 1 "jobs" av 1 a{sv} 7 "job" x 1 "kind" s "create" "model" s "stories" "state" s "done" "status" s "success"'*)
        ok "busctl call Jobs: the Create job that made the model" ;;
*) not_ok "busctl call Jobs: the Create job that made the model" "$out" ;;
esac

out=$(busctl --user call $(manager) Show 'sa{sv}' nonexistent 0 2>&1)
if [ "$out" = "Call failed: Model 'nonexistent:latest' not found; 'qctl list' shows the local models." ]; then
        ok "busctl call Show of a missing model: the daemon's sentence"
else not_ok "busctl call Show of a missing model: the daemon's sentence" "$out"; fi

out=$(busctl --user call $(manager) Generate 'ssa{sv}' stories x 1 prompt s y 2>&1)
if [ "$out" = "Call failed: Parameter 'prompt' is an argument of its own; leave it out of the a{sv}." ]; then
        ok "busctl call Generate repeating a typed argument: refused"
else not_ok "busctl call Generate repeating a typed argument: refused" "$out"; fi

kill "$quantd_pid"
if wait "$quantd_pid"; then ok "quantd --user stops cleanly"; else not_ok "quantd --user stops cleanly"; fi
quantd_pid=

echo "1..$n"
exit $failed
