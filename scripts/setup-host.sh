#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Install what building and testing rmirror needs on a Debian 12 host: Debian packages (bookworm,
# bookworm-security) and bindgen-cli from crates.io. Idempotent; a stamp keyed by this file skips it.
set -euo pipefail
. "$(dirname "$0")/env.sh"

PKGS=(build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils kmod dwarves python3
      rustc-web rust-web-src cargo-web clang-19 libclang-19-dev lld-19 llvm-19
      busybox-static qemu-system-x86 qemu-utils e2fsprogs fio iproute2 iptables dmsetup util-linux
      python3-pytest netbase iperf3 drbd-utils gnuplot-nox)

mkdir -p "$RMIRROR_CACHE"
stamp="$RMIRROR_CACHE/host-setup.$(sha256sum "$0" | cut -c1-16)"
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # Third-party sources on some machines may fail to refresh; what we need is in Debian's own.
    timed apt-get update -qq || log "apt-get update reported errors (continuing)"
    timed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bindgen-cli 0.73.2 from crates.io, built with Debian's cargo-web (the kernel needs >= 0.71.1).
BG=$RMIRROR_CACHE/bindgen-0.73.2
if [ ! -x "$BG/bin/bindgen" ]; then
    log "building bindgen-cli 0.73.2 (a few minutes)"
    timed env PATH=/usr/bin:/bin CARGO_HOME="$RMIRROR_CACHE/cargo-home" \
        /usr/bin/cargo install --locked --quiet --root "$BG" bindgen-cli@0.73.2
fi
mkdir -p "$TOOLBIN"
ln -sfn /usr/bin/rustc "$TOOLBIN/rustc"
ln -sfn /usr/bin/rustdoc "$TOOLBIN/rustdoc"
ln -sfn "$BG/bin/bindgen" "$TOOLBIN/bindgen"
touch "$stamp"
log "host ready: $(rustc --version), $(bindgen --version 2>&1 | head -1)"
