#!/bin/sh
# SPDX-License-Identifier: MIT
# The units, sysusers and tmpfiles snippets are valid: systemd-analyze verifies the units (with ExecStart
# pointing at the built quantd), systemd-sysusers and systemd-tmpfiles parse the snippets into a scratch root.
src=$1
build=$2
quantd=$3
n=0
fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; }
check() { desc=$1; shift; if out=$("$@" 2>&1); then ok "$desc"; else not_ok "$desc"; echo "$out" | sed 's/^/# /'; fi; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "1..6"

# systemd-analyze wants the binary at the ExecStart path and the socket beside the service.
for u in quantd.service quantd-user.service; do
        sed "s|^ExecStart=[^ ]*|ExecStart=$quantd|" "$build/$u" >"$tmp/$u"
done
cp "$src/systemd/quantd.socket" "$tmp/quantd.socket"
mkdir -p "$tmp/user"
cp "$tmp/quantd-user.service" "$tmp/user/quantd.service"
cp "$src/systemd/quantd-user.socket" "$tmp/user/quantd.socket"

verify() {
        # Only problems with our own units count: the host's other units may not all verify in a container.
        out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$@" 2>&1)
        if echo "$out" | grep -E 'quantd\.(service|socket)' | grep -vE 'Failed to put bus name|not found' | grep -q .; then
                echo "$out"
                return 1
        fi
        return 0
}
check "system units verify" verify "$tmp/quantd.service" "$tmp/quantd.socket"
check "user units verify" verify --user "$tmp/user/quantd.service" "$tmp/user/quantd.socket"
check "the service is Type=notify and runs as quantd" \
        sh -c "grep -qx 'Type=notify' '$tmp/quantd.service' && grep -qx 'User=quantd' '$tmp/quantd.service'"
check "the system socket is 0660 group quantd, the user socket 0600" \
        sh -c "grep -qx 'SocketMode=0660' '$tmp/quantd.socket' && grep -qx 'SocketGroup=quantd' '$tmp/quantd.socket' && grep -qx 'SocketMode=0600' '$tmp/user/quantd.socket'"
check "sysusers creates the quantd user and group" \
        sh -c "mkdir -p '$tmp/root/etc' && systemd-sysusers --root='$tmp/root' '$src/sysusers.conf' && grep -q '^quantd:' '$tmp/root/etc/passwd' && grep -q '^quantd:' '$tmp/root/etc/group'"
check "tmpfiles creates the model store" \
        sh -c "systemd-tmpfiles --create --root='$tmp/root' '$src/tmpfiles.conf' && test -d '$tmp/root/var/lib/quantd/models'"
exit $fail
