#!/bin/bash
# SPDX-License-Identifier: MIT
# Bus activation on the session bus: a private session bus whose service directory holds the built
# org.quantd.Quantd1.service (Exec= pointed at this build's quantd), no quantd running; the first call starts
# quantd --user --foreground, which answers it. TAP output.
# Usage: test-dbus-activation.sh QUANTD SESSION_SERVICE_FILE
set -u

quantd=$1
service=$2
tmp=$(mktemp -d /tmp/quantd-dbus-activation-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

mkdir "$tmp/services"
sed "s|^Exec=.*/quantd |Exec=$quantd |" "$service" >"$tmp/services/org.quantd.Quantd1.service"
cat >"$tmp/session.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=$tmp</listen>
  <auth>EXTERNAL</auth>
  <servicedir>$tmp/services</servicedir>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF

# The user daemon's paths follow XDG, here inside tmp.
export XDG_RUNTIME_DIR=$tmp XDG_DATA_HOME=$tmp/data XDG_CONFIG_HOME=$tmp/config
dbus-run-session --config-file="$tmp/session.conf" -- bash -c '
        failed=0
        before=$(busctl --user call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
                NameHasOwner s org.quantd.Quantd1 2>&1)
        out=$(busctl --user --timeout=60 call org.quantd.Quantd1 /org/quantd/Quantd1 \
                org.quantd.Quantd1.Manager List "a{sv}" 0 2>&1)
        if [ "$before" = "b false" ] && [ "$out" = "a{sv} 1 \"models\" av 0" ]; then
                echo "ok 1 - the first call activates quantd --user, which answers it"
        else
                echo "not ok 1 - the first call activates quantd --user, which answers it"
                echo "# before: $before; List: $out"
                failed=1
        fi
        pid=$(busctl --user call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
                GetConnectionUnixProcessID s org.quantd.Quantd1 2>/dev/null | sed -n "s/^u //p")
        if [ -n "$pid" ] && [ -S "$XDG_RUNTIME_DIR/quantd/quantd.sock" ]; then
                echo "ok 2 - the activated daemon serves its socket in XDG_RUNTIME_DIR too"
        else
                echo "not ok 2 - the activated daemon serves its socket in XDG_RUNTIME_DIR too"
                failed=1
        fi
        if [ -n "$pid" ]; then
                kill "$pid"
                for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
                echo "ok 3 - it stops on SIGTERM"
        else
                echo "not ok 3 - it stops on SIGTERM"
                failed=1
        fi
        echo "1..3"
        exit $failed
'
