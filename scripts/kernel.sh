#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Fetch Debian's linux-source-7.2 (sid, else trixie-backports) through a private apt configuration and
# build the small Rust-enabled test kernel from scripts/kernel.config.
#   scripts/kernel.sh            build if needed, print the build directory (KDIR) on stdout
#   RMIRROR_KERNEL_REFRESH=1     look for a newer source package instead of reusing the cached one
#   RMIRROR_KERNEL_VARIANT=bench the bench kernel: kernel.config with kernel-bench.config's settings
#                                 (no lockdep, KASAN, kmemleak...); its link is kernel/bench, not current
# The build is cached in $RMIRROR_CACHE/kernel/<source version>-<config hash>-<rustc + LLVM hash>.
set -euo pipefail
. "$(dirname "$0")/env.sh"
VARIANT=${RMIRROR_KERNEL_VARIANT:-test}
FRAG="$RMIRROR_TOP/scripts/kernel.config"
LINK=current
if [ "$VARIANT" = bench ]; then
    # The effective fragment: kernel.config without the options kernel-bench.config sets, then those.
    over="$RMIRROR_TOP/scripts/kernel-bench.config"
    FRAG=$(mktemp) && trap 'rm -f "$FRAG"' EXIT
    opts=$(grep -oE '^(# )?CONFIG_[A-Za-z0-9_]+' "$over" | sed 's/^# //' | sort -u)
    grep -vwF -f <(echo "$opts") "$RMIRROR_TOP/scripts/kernel.config" > "$FRAG"
    cat "$over" >> "$FRAG"
    LINK=bench
elif [ "$VARIANT" != test ]; then
    die "RMIRROR_KERNEL_VARIANT must be test or bench, not $VARIANT"
fi
SRCDIR="$RMIRROR_CACHE/kernel-src"
mkdir -p "$SRCDIR"

fetch_source() {
    local A="$SRCDIR/apt" suite
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial"
    for suite in "sid main" "trixie-backports main"; do
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite" \
            > "$A/sources.list"
        local O=(-o Dir::Etc::SourceList="$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
                 -o Dir::State::Lists="$A/lists" -o Dir::Cache="$A/cache" -o Dir::State::status=/dev/null
                 -o APT::Get::List-Cleanup=0)
        rm -rf "$A/lists"/*Packages* 2>/dev/null || true
        apt-get "${O[@]}" -qq update || { log "apt update failed for $suite"; continue; }
        local ver
        ver=$(apt-cache "${O[@]}" show linux-source-7.2 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1)
        [ -n "$ver" ] || { log "no linux-source-7.2 in $suite"; continue; }
        (cd "$SRCDIR" && apt-get "${O[@]}" -qq download "linux-source-7.2=$ver") || continue
        log "fetched linux-source-7.2 $ver from ${suite%% *}"
        return 0
    done
    die "could not fetch linux-source-7.2 from sid or trixie-backports"
}

deb=$(ls -1 "$SRCDIR"/linux-source-7.2_*_all.deb 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$deb" ] || [ "${RMIRROR_KERNEL_REFRESH:-0}" = 1 ]; then
    timed fetch_source
    deb=$(ls -1 "$SRCDIR"/linux-source-7.2_*_all.deb | sort -V | tail -1)
fi
ver=$(basename "$deb" | sed 's/^linux-source-7.2_\(.*\)_all.deb$/\1/')
KSRC="$SRCDIR/linux-source-$ver"
if [ ! -f "$KSRC/Makefile" ]; then
    log "unpacking linux-source $ver"
    rm -rf "$KSRC.tmp" && mkdir -p "$KSRC.tmp"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/linux-source-7.2.tar.xz | tar -xJ -C "$KSRC.tmp"
    mv "$KSRC.tmp/linux-source-7.2" "$KSRC" && rm -rf "$KSRC.tmp"
fi

# The key hashes the fragment's settings only (CONFIG_ lines and "# CONFIG_... is not set"), not its comments.
key="$ver-$(grep -E '^(CONFIG_|# CONFIG_.* is not set)' "$FRAG" | sha256sum | cut -c1-12)-$(printf '%s %s' "$(rustc --version)" "$LLVM" | sha256sum | cut -c1-8)"
KDIR="$RMIRROR_CACHE/kernel/$key"
if [ ! -f "$KDIR/.rmirror-built" ]; then
    log "building kernel $key (about 15 minutes on 2 cores); log: $KDIR/build.log"
    rm -rf "$KDIR"
    # Seed from an earlier build of the same source (another config or rustc): make then rebuilds
    # only what the change touches. A rustc change invalidates all Rust objects by itself.
    seed=$(ls -1dt "$RMIRROR_CACHE/kernel/$ver-"*/ 2>/dev/null | grep -v "/$key/" | head -1 || true)
    if [ -n "$seed" ] && [ -f "$seed/.config" ]; then
        log "seeding the build from $seed"
        cp -a "$seed" "$KDIR" && rm -f "$KDIR/.rmirror-built"
    fi
    mkdir -p "$KDIR"
    make -C "$KSRC" rustavailable >&2
    make -C "$KSRC" O="$KDIR" tinyconfig >/dev/null
    "$KSRC/scripts/kconfig/merge_config.sh" -m -O "$KDIR" "$KDIR/.config" "$FRAG" >/dev/null
    make -C "$KSRC" O="$KDIR" olddefconfig >/dev/null
    lost=0
    while read -r l; do
        case "$l" in
            CONFIG_*=*) grep -qx "$l" "$KDIR/.config" || { log "config lost: $l"; lost=1; } ;;
            "# CONFIG_"*" is not set") o=${l#\# }; o=${o%% *}
                if grep -q "^$o=" "$KDIR/.config"; then log "config option came back: $o"; lost=1; fi ;;
        esac
    done < "$FRAG"
    [ $lost = 0 ] || die "kernel config fragment did not survive olddefconfig (see above)"
    timed make -C "$KSRC" O="$KDIR" -j"$(nproc)" >"$KDIR/build.log" 2>&1 || { tail -40 "$KDIR/build.log" >&2; die "kernel build failed"; }
    touch "$KDIR/.rmirror-built"
fi
ln -sfn "$KDIR" "$RMIRROR_CACHE/kernel/$LINK"
echo "$KDIR"
