#!/bin/bash
# SPDX-License-Identifier: MIT
# The system daemon on a system-like bus: a private dbus-daemon that denies by default and includes our policy
# file, quantd in system mode on it, and a stand-in polkit authority. An unprivileged caller (nobody) may list
# and generate; its store changes go through polkit: denied when the authority is absent or says no, done when it
# says yes; root's never ask. TAP output.
# Usage: test-dbus-system.sh QUANTD DBUS_TEST_TOOL POLICY_FILE
set -u

quantd=$1
tool=$2
policy=$3
n=0
failed=0
tmp=$(mktemp -d /tmp/quantd-dbus-system-XXXXXX)
chmod 0755 "$tmp" # the bus socket lives here, and nobody must reach it
pids=()
cleanup() {
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
        wait 2>/dev/null
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

if [ "$(id -u)" != 0 ]; then
        # Calling as another user needs root; this is the only way this test does not run.
        echo "1..0 # SKIP needs root to call as an unprivileged user"
        exit 0
fi

cat >"$tmp/system.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$tmp/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <!-- What polkitd's own policy file says, for the stand-in. -->
  <policy user="root">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
  <include>$policy</include>
</busconfig>
EOF

dbus-daemon --config-file="$tmp/system.conf" --nofork --nopidfile --print-address=1 >"$tmp/address" \
        2>"$tmp/bus.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/address" ] && break; sleep 0.05; done
export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$tmp/system_bus_socket"
export QUANTD_TEST_SYSTEM_BUS=1

bus() {
        busctl --system "$@"
}
as_nobody() {
        setpriv --reuid=65534 --regid=65534 --clear-groups busctl --system "$@"
}
manager() {
        echo org.quantd.Quantd1 /org/quantd/Quantd1 org.quantd.Quantd1.Manager
}

: >"$tmp/quantd.conf"
"$quantd" --backend=fake --socket="$tmp/sock" --models="$tmp/models" --config="$tmp/quantd.conf" \
        2>"$tmp/quantd.log" &
quantd_pid=$!
pids+=($quantd_pid)
for _ in $(seq 100); do bus status org.quantd.Quantd1 >/dev/null 2>&1 && break; sleep 0.1; done
if bus status org.quantd.Quantd1 >/dev/null 2>&1; then
        ok "the system daemon owns org.quantd.Quantd1 under the policy file"
else
        not_ok "the system daemon owns org.quantd.Quantd1 under the policy file" "$(cat "$tmp/quantd.log")"
        echo "1..$n"
        exit 1
fi

printf 'size=1000\n' >"$tmp/fast.model"
out=$("$tool" create fast "$tmp/fast.model" 2>&1)
if [ "$out" = "created fast" ]; then ok "root creates a model without asking polkit"
else not_ok "root creates a model without asking polkit" "$out"; fi

out=$(as_nobody call $(manager) List 'a{sv}' 0 2>&1)
case $out in
*'"fast:latest"'*) ok "nobody lists the models" ;;
*) not_ok "nobody lists the models" "$out" ;;
esac

out=$(as_nobody --timeout=60 call $(manager) Generate 'ssa{sv}' fast "Hello" 1 options 'a{sv}' 1 num_predict x 5 2>&1)
case $out in
*'"eval_count" x 5'*) ok "nobody generates" ;;
*) not_ok "nobody generates" "$out" ;;
esac

# No authority on the bus: denied, saying that polkit could not be asked.
out=$(as_nobody call $(manager) Copy 'ssa{sv}' fast copy 0 2>&1)
case $out in
*"Authorization could not be checked, so the request is denied"*) ok "no authority: denied with a clear error" ;;
*) not_ok "no authority: denied with a clear error" "$out" ;;
esac

start_authority() {
        "$tool" authority "$1" "$tmp/questions" >"$tmp/authority.out" 2>&1 &
        authority_pid=$!
        pids+=($authority_pid)
        for _ in $(seq 100); do grep -q ready "$tmp/authority.out" 2>/dev/null && return 0; sleep 0.05; done
        return 1
}
stop_authority() {
        kill "$authority_pid" 2>/dev/null
        wait "$authority_pid" 2>/dev/null
}

start_authority deny
out=$(as_nobody call $(manager) Copy 'ssa{sv}' fast copy 0 2>&1)
case $out in
*"Not authorized: polkit denies 'org.quantd.Quantd1.manage' to this caller."*)
        ok "the authority says no: denied" ;;
*) not_ok "the authority says no: denied" "$out" ;;
esac
question=$(tail -n 1 "$tmp/questions" 2>/dev/null)
case $question in
"org.quantd.Quantd1.manage 1 system-bus-name :"*) ok "polkit is asked about the caller's bus name, interactively" ;;
*) not_ok "polkit is asked about the caller's bus name, interactively" "$question" ;;
esac
out=$(as_nobody --allow-interactive-authorization=no call $(manager) Delete 'sa{sv}' fast 0 2>&1)
question=$(tail -n 1 "$tmp/questions" 2>/dev/null)
case $question in
"org.quantd.Quantd1.manage 0 system-bus-name :"*) ok "a call that forbids interaction asks polkit without it" ;;
*) not_ok "a call that forbids interaction asks polkit without it" "$question" ;;
esac
stop_authority

start_authority allow
out=$(as_nobody call $(manager) Copy 'ssa{sv}' fast copy 0 2>&1)
list=$(bus call $(manager) List 'a{sv}' 0 2>&1)
case $list in
*'"copy:latest"'*) ok "the authority says yes: the copy is made" ;;
*) not_ok "the authority says yes: the copy is made" "$out $list" ;;
esac

asked=$(wc -l <"$tmp/questions")
out=$(bus call $(manager) Delete 'sa{sv}' copy 0 2>&1)
if [ "$(wc -l <"$tmp/questions")" = "$asked" ] && [ "$out" = "a{sv} 0" ]; then
        ok "root deletes without asking polkit"
else not_ok "root deletes without asking polkit" "$out"; fi
stop_authority

# The policy lets only root and the quantd user own the name: a daemon run as nobody is refused by the bus.
mkdir -m 0777 "$tmp/nobody"
setpriv --reuid=65534 --regid=65534 --clear-groups "$quantd" --backend=fake --socket="$tmp/nobody/sock" \
        --models="$tmp/nobody/models" --config="$tmp/quantd.conf" 2>"$tmp/nobody.log" &
nobody_pid=$!
pids+=($nobody_pid)
for _ in $(seq 100); do grep -q "bus name" "$tmp/nobody.log" && break; sleep 0.05; done
kill "$nobody_pid" 2>/dev/null
wait "$nobody_pid" 2>/dev/null
if grep -q 'Failed to take the bus name org.quantd.Quantd1.*not allowed to own' "$tmp/nobody.log"; then
        ok "the policy refuses the name to a daemon run as nobody"
else not_ok "the policy refuses the name to a daemon run as nobody" "$(cat "$tmp/nobody.log")"; fi

# A clean stop: SIGTERM, exit status 0.
kill "$quantd_pid"
if wait "$quantd_pid"; then ok "quantd stops cleanly"; else not_ok "quantd stops cleanly" "$(tail "$tmp/quantd.log")"; fi

echo "1..$n"
exit $failed
