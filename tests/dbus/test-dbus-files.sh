#!/bin/bash
# SPDX-License-Identifier: MIT
# The D-Bus data files: well-formed XML, the polkit action against polkit's DTD, the bus policy as dbus-daemon
# parses it (and a broken copy refused, so the check can fail), the interface files' shape and the activation
# files' keys. TAP output.
# Usage: test-dbus-files.sh DBUS_SOURCE_DIR SESSION_SERVICE_FILE
set -u

src=$1
session_service=$2
n=0
failed=0
tmp=$(mktemp -d)
daemon_pid=
cleanup() {
        [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null
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
        [ $# -gt 1 ] && printf '# %s\n' "$2"
}
check() {
        local what=$1
        shift
        local out
        if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what" "$out"; fi
}

for f in org.quantd.Quantd1.Manager.xml org.quantd.Quantd1.Request.xml org.quantd.Quantd1.conf \
        org.quantd.Quantd1.policy; do
        check "$f is well-formed XML" xmllint --noout --nonet "$src/$f"
done

dtd=/usr/share/polkit-1/policyconfig-1.dtd
if [ -r "$dtd" ]; then
        check "the polkit action validates against $dtd" xmllint --noout --nonet --dtdvalid "$dtd" \
                "$src/org.quantd.Quantd1.policy"
else
        not_ok "the polkit action validates against polkit's DTD" "$dtd is missing: install polkitd"
fi
action=$(xmllint --nonet --xpath 'string(/policyconfig/action/@id)' "$src/org.quantd.Quantd1.policy")
if [ "$action" = org.quantd.Quantd1.manage ]; then ok "the polkit action is org.quantd.Quantd1.manage"
else not_ok "the polkit action is org.quantd.Quantd1.manage" "got '$action'"; fi
owner=$(xmllint --nonet --xpath \
        "string(/policyconfig/action/annotate[@key='org.freedesktop.policykit.owner'])" "$src/org.quantd.Quantd1.policy")
if [ "$owner" = unix-user:quantd ]; then ok "the quantd user (the system daemon's) owns the polkit action"
else not_ok "the quantd user (the system daemon's) owns the polkit action" "got '$owner'"; fi

# Every method of the interface: typed arguments, then "parameters" a{sv} in, one "result" a{sv} out.
iface="/node/interface[@name='org.quantd.Quantd1.Manager']"
xml="$src/org.quantd.Quantd1.Manager.xml"
methods=$(xmllint --nonet --xpath "$iface/method/@name" "$xml" | sed 's/ name="\([^"]*\)"/\1\n/g')
bad=
for m in $methods; do
        last_in=$(xmllint --nonet --xpath "string($iface/method[@name='$m']/arg[@direction='in'][last()]/@type)" "$xml")
        last_name=$(xmllint --nonet --xpath "string($iface/method[@name='$m']/arg[@direction='in'][last()]/@name)" "$xml")
        outs=$(xmllint --nonet --xpath "count($iface/method[@name='$m']/arg[@direction='out'])" "$xml")
        out=$(xmllint --nonet --xpath "string($iface/method[@name='$m']/arg[@direction='out']/@type)" "$xml")
        [ "$last_in" = "a{sv}" ] && [ "$last_name" = parameters ] && [ "$outs" = 1 ] && [ "$out" = "a{sv}" ] ||
                bad="$bad $m"
done
if [ -n "$methods" ] && [ -z "$bad" ]; then ok "every method ends in a{sv} parameters and returns a{sv}"
else not_ok "every method ends in a{sv} parameters and returns a{sv}" "methods:$bad"; fi

# The system bus policy, included in a system-like configuration that denies by default: dbus-daemon must
# accept it. A copy with an unknown attribute must be refused, or this check proves nothing.
write_conf() {
        cat >"$tmp/bus-$1.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$tmp/bus-$1</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_destination="org.freedesktop.DBus"/>
  </policy>
  <include>$2</include>
</busconfig>
EOF
}
start_bus() {
        dbus-daemon --config-file="$tmp/bus-$1.conf" --nofork --nopidfile --print-address=1 >"$tmp/addr-$1" \
                2>"$tmp/err-$1" &
        daemon_pid=$!
        for _ in $(seq 100); do
                [ -s "$tmp/addr-$1" ] && return 0
                kill -0 "$daemon_pid" 2>/dev/null || { daemon_pid=; return 1; }
                sleep 0.05
        done
        return 1
}
stop_bus() {
        [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
        daemon_pid=
}

write_conf good "$src/org.quantd.Quantd1.conf"
if start_bus good; then ok "dbus-daemon accepts the system bus policy"
else not_ok "dbus-daemon accepts the system bus policy" "$(cat "$tmp/err-good")"; fi
stop_bus

sed 's/send_interface=/send_nonsense=/' "$src/org.quantd.Quantd1.conf" >"$tmp/broken.conf"
write_conf broken "$tmp/broken.conf"
if start_bus broken; then not_ok "dbus-daemon refuses a broken copy of the policy"; stop_bus
else ok "dbus-daemon refuses a broken copy of the policy"; fi

owners=$(xmllint --nonet --xpath "count(/busconfig/policy/allow[@own='org.quantd.Quantd1'])" \
        "$src/org.quantd.Quantd1.conf")
default_own=$(xmllint --nonet --xpath "count(/busconfig/policy[@context='default']/allow[@own])" \
        "$src/org.quantd.Quantd1.conf")
if [ "$owners" -ge 1 ] && [ "$default_own" = 0 ]; then ok "only named users may own the name"
else not_ok "only named users may own the name" "owners=$owners default_own=$default_own"; fi

# Activation files.
sys="$src/org.quantd.Quantd1.system.service"
if grep -qx 'Name=org.quantd.Quantd1' "$sys" && grep -qx 'SystemdService=quantd.service' "$sys" &&
        grep -qx 'User=root' "$sys" && grep -qx '\[D-BUS Service\]' "$sys"; then
        ok "the system activation file names org.quantd.Quantd1 and quantd.service"
else not_ok "the system activation file names org.quantd.Quantd1 and quantd.service" "$(cat "$sys")"; fi
if grep -qx 'Name=org.quantd.Quantd1' "$session_service" &&
        grep -qx 'Exec=/.*/quantd --user --foreground' "$session_service" &&
        grep -qx 'SystemdService=quantd.service' "$session_service" && ! grep -q @ "$session_service"; then
        ok "the session activation file starts quantd --user"
else not_ok "the session activation file starts quantd --user" "$(cat "$session_service")"; fi

echo "1..$n"
exit $failed
