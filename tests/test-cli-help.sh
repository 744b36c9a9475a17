#!/bin/sh
# SPDX-License-Identifier: MIT
# quantd and qctl answer --help and --version, and reject unknown options with exit code 2.
quantd=$1
qctl=$2
n=0
fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; }
check() { desc=$1; shift; if "$@"; then ok "$desc"; else not_ok "$desc"; fi; }

echo "1..8"
check "quantd --help mentions usage" sh -c "'$quantd' --help | grep -q '^Usage: quantd'"
check "quantd --version prints the version" sh -c "'$quantd' --version | grep -Eq '^quantd [0-9]+\.[0-9]+'"
check "quantd rejects an unknown option with 2" sh -c "'$quantd' --no-such-option 2>/dev/null; test \$? -eq 2"
check "quantd rejects a bad log level" sh -c "'$quantd' --log-level=loud 2>&1 | grep -q \"Unknown log level 'loud'\""
check "qctl --help lists the verbs" sh -c "'$qctl' --help | grep -q 'pull MODEL'"
check "qctl --version prints the version" sh -c "'$qctl' --version | grep -Eq '^qctl [0-9]+\.[0-9]+'"
check "qctl rejects an unknown option with 2" sh -c "'$qctl' --no-such-option 2>/dev/null; test \$? -eq 2"
check "qctl without a verb prints usage and exits 2" sh -c "'$qctl' >/dev/null 2>&1; test \$? -eq 2"
exit $fail
