# SPDX-License-Identifier: GPL-2.0
# Common environment for rmirror's build and test scripts (sourced, not run).
# Everything expensive lives in $RMIRROR_CACHE, outside the repository, keyed by its inputs.
RMIRROR_CACHE=${RMIRROR_CACHE:-/var/cache/rmirror}
RMIRROR_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLBIN=$RMIRROR_CACHE/toolbin
export LIBCLANG_PATH=/usr/lib/llvm-19/lib
# The kernel and the module are built with clang/lld 19 (LLVM=-19 picks clang-19, ld.lld-19, llvm-ar-19...):
# Rust with KASAN needs a clang-built kernel (init/Kconfig: RUST depends on !KASAN || CC_IS_CLANG).
export LLVM=${LLVM--19}
# The kernel calls plain `rustc`, `rustdoc` and `bindgen`: our links to the Debian toolchain come first,
# ahead of rustup's rustc (which has no library source).
export PATH="$TOOLBIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"
log() { printf '[rmirror] %s\n' "$*" >&2; }
die() { printf '[rmirror] error: %s\n' "$*" >&2; exit 1; }
timed() { local s; s=$(date +%s); "$@"; local rc=$?; log "took $(( $(date +%s) - s ))s: $*"; return $rc; }
