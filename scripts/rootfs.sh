#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Build the test guests' root filesystem: an ext4 image made without mounting (mke2fs -d) from busybox-static
# plus a few Debian tools copied with their shared libraries, an /init and the command agent.
#   scripts/rootfs.sh            build if needed, print the image path on stdout
#   RMIRROR_ROOTFS_REBUILD=1     rebuild even if the cached image exists
# The image is cached in $RMIRROR_CACHE/rootfs/<key>.img; the key hashes this script, the versions of the
# Debian packages it copies from and the contents of every copied file. The module, the tool and the test
# scripts are NOT in it: each run attaches them as a small read-only "payload" disk (scripts/vm.py).
set -euo pipefail
. "$(dirname "$0")/env.sh"
SELF="$RMIRROR_TOP/scripts/rootfs.sh"
OUT="$RMIRROR_CACHE/rootfs"

# Debian packages the image takes files from (their versions go into the cache key and the manifest).
PKGS=(busybox-static dash coreutils findutils fio iproute2 iptables e2fsprogs dmsetup util-linux libc6 netbase
      iperf3 drbd-utils)
# Commands copied from the host (by `command -v` name, or an absolute path), with their shared libraries.
# iperf3 measures the guests' link and drbdsetup-84/drbdmeta set up the kernel's DRBD 8.4 for `make bench`
# (scripts/bench.py); drbd-utils 9.x keeps the 8.4 drbdsetup in /usr/lib/drbd, and its drbdmeta writes v08
# metadata.
CMDS=(dash fio iperf3 drbdmeta /usr/lib/drbd/drbdsetup-84
      ip tc iptables iptables-nft iptables-legacy iptables-save iptables-restore
      xtables-nft-multi xtables-legacy-multi
      mke2fs mkfs.ext4 e2fsck fsck.ext4 debugfs tune2fs dumpe2fs dmsetup setpriv blockdev
      timeout env nohup nice chroot xargs setsid taskset flock ionice nsenter unshare)
# (Debian's busybox-static prefers its own applets whenever one of its applets execs a program: busybox
# `timeout 5 ip ...` would run busybox's ip. So the exec-ing applets above come from coreutils, findutils
# and util-linux, and /bin/sh is dash, not busybox's ash.)
# Whole directories of dlopen()ed plugins (each .so's libraries are copied as well).
PLUGDIRS=(/usr/lib/x86_64-linux-gnu/xtables /usr/lib/x86_64-linux-gnu/tc)
# Plain files copied as they are.
FILES=(/etc/protocols /etc/services /etc/ethertypes /etc/iproute2)
# Libraries a dynamically linked Rust tool (rmirrorctl) needs even if no command above pulls them in.
EXTRALIBS=(libgcc_s.so.1 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1)

for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
        die "package $p is not installed (run scripts/setup-host.sh)"
done
[ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static)"
case "$(/bin/busybox --help 2>&1 || true)" in BusyBox*) ;; *) die "/bin/busybox is not busybox" ;; esac
ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamically linked; need busybox-static"

# ---- resolve the list of host files to copy ---------------------------------------------------------
declare -A SEEN=()
LIST=()
add() { local f=$1; [ -n "${SEEN[$f]:-}" ] && return 0; SEEN[$f]=1; LIST+=("$f"); }
add_libs() {    # add the shared libraries (and the loader) that ELF file $1 needs
    local out l
    out=$(ldd "$1" 2>/dev/null) || return 0
    while read -r l; do
        case "$l" in
            *"=> not found"*) die "ldd $1: $l" ;;
            *"=> /"*) l=${l#*=> }; add "${l%% (*}" ;;
            /*) add "${l%% (*}" ;;
        esac
    done <<<"$out"
}
for c in "${CMDS[@]}"; do
    p=$(command -v "$c") || die "command $c not found on the host"
    add "$p"; add_libs "$p"
done
for d in "${PLUGDIRS[@]}"; do
    [ -d "$d" ] || die "missing plugin directory $d"
    add "$d"
    for f in "$d"/*.so; do [ -e "$f" ] && add_libs "$f"; done
done
for f in "${FILES[@]}"; do [ -e "$f" ] && add "$f"; done
for l in "${EXTRALIBS[@]}"; do
    p=/lib/x86_64-linux-gnu/$l
    [ -e "$p" ] && add "$p"
done

# ---- cache key ---------------------------------------------------------------------------------------
key=$( {
    cat "$SELF"
    dpkg-query -W -f='${Package} ${Version}\n' "${PKGS[@]}"
    printf '%s\n' "${LIST[@]}" | sort
    { printf '%s\n' /bin/busybox; for f in "${LIST[@]}"; do
        if [ -d "$f" ]; then find -L "$f" -type f; else readlink -f "$f"; fi; done; } |
        sort -u | xargs -d '\n' sha256sum
} | sha256sum | cut -c1-16)
IMG="$OUT/$key.img"
if [ -f "$IMG" ] && [ "${RMIRROR_ROOTFS_REBUILD:-0}" != 1 ]; then
    ln -sfn "$key.img" "$OUT/current.img"
    echo "$IMG"
    exit 0
fi

# ---- staging tree ------------------------------------------------------------------------------------
mkdir -p "$OUT"
S=$(mktemp -d "$OUT/.staging.XXXXXX")
trap 'rm -rf "$S" "$IMG.tmp.$$"' EXIT
log "building rootfs $key in $S"
# merged-/usr layout, like the host: /bin, /sbin, /lib, /lib64 are links into /usr
mkdir -p "$S"/usr/{bin,sbin,lib,lib64} "$S"/{etc,dev,proc,sys,tmp,run,root,p,mnt,mnt/a,mnt/b,var,home}
ln -s usr/bin "$S/bin"; ln -s usr/sbin "$S/sbin"; ln -s usr/lib "$S/lib"; ln -s usr/lib64 "$S/lib64"
ln -s /tmp "$S/var/tmp"; ln -s /run "$S/var/run"; ln -s /run/lock "$S/var/lock"
chmod 1777 "$S/tmp"; chmod 0700 "$S/root"

copy_path() {   # copy host path $1 into the staging tree, recreating symlinks along the way
    local p=$1 depth=${2:-0} t
    [ "$depth" -lt 16 ] || die "symlink loop at $p"
    if [ -L "$p" ]; then
        t=$(readlink "$p")
        mkdir -p "$S$(dirname "$p")"
        [ -e "$S$p" ] || [ -L "$S$p" ] || ln -s "$t" "$S$p"
        case "$t" in /*) ;; *) t="$(dirname "$p")/$t" ;; esac
        copy_path "$t" $((depth + 1))
    elif [ -d "$p" ]; then
        mkdir -p "$S$p"
        cp -a "$p/." "$S$p/"
    else
        mkdir -p "$S$(dirname "$p")"
        [ -e "$S$p" ] || cp -p "$p" "$S$p"
    fi
}
for f in "${LIST[@]}"; do copy_path "$f"; done
# plugin directories may contain symlinks to files outside them
for d in "${PLUGDIRS[@]}"; do
    find "$d" -type l | while read -r l; do copy_path "$(readlink -f "$l")"; done
done

# /bin/sh is dash: Debian's busybox-static prefers its own applets inside its shell (so `ip`, `blockdev` in a
# busybox sh script would not be the Debian tools); busybox's shell stays available as `ash`.
ln -s dash "$S/usr/bin/sh"
# busybox: every applet that no Debian binary above provides
cp /bin/busybox "$S/usr/bin/busybox"
/bin/busybox --list-full | while read -r a; do
    case "$a" in bin/*|sbin/*) a="usr/$a" ;; esac
    [ -e "$S/$a" ] || [ -L "$S/$a" ] || ln -s /usr/bin/busybox "$S/$a"
done
# iptables: the nft backend (kernel has NF_TABLES + NFT_COMPAT); iptables-legacy is there too
ln -sfn xtables-nft-multi "$S/usr/sbin/iptables"

cat > "$S/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
tester:x:1000:1000:rmirror tester:/tmp:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat > "$S/etc/group" <<'EOF'
root:x:0:
tester:x:1000:
nogroup:x:65534:
EOF
cat > "$S/etc/shadow" <<'EOF'
root:*:19000:0:99999:7:::
tester:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 0640 "$S/etc/shadow"
cat > "$S/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
shadow: files
hosts: files
protocols: files
services: files
EOF
cat > "$S/etc/hosts" <<'EOF'
127.0.0.1 localhost
10.99.0.1 alpha
10.99.0.2 beta
EOF
ln -s /proc/self/mounts "$S/etc/mtab"
echo "rmirror-guest" > "$S/etc/hostname"
printf 'rmirror test guest (busybox + Debian tools), built by scripts/rootfs.sh key %s\n' "$key" > "$S/etc/issue"

# ---- /init: PID 1 -------------------------------------------------------------------------------------
cat > "$S/init" <<'EOF'
#!/bin/sh
# rmirror test guest init: mount the pseudo file systems, name the host, configure eth0 from the kernel
# command line (rmirror.host=NAME rmirror.ip=ADDR/PREFIX), mount the payload disk (/dev/vdc) at /p, then
# keep the command agent running (it serves the host over the virtio-serial port "rmirror.agent").
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
say() { echo "rmirror-init: $*" > /dev/kmsg 2>/dev/null || echo "rmirror-init: $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock /run/agent
arg() { sed -n "s/.*[[:space:]]rmirror\.$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }
h=$(arg host); ipa=$(arg ip)
hostname "${h:-rmirror-guest}"
ip link set lo up
if [ -n "$ipa" ]; then
    ip addr add "$ipa" dev eth0 && ip link set eth0 up || say "eth0 setup failed"
fi
if [ -b /dev/vdc ]; then
    mount -t ext4 -o ro /dev/vdc /p || say "payload mount failed"
fi
say "up: host=$(hostname) ip=$ipa uptime=$(cut -d' ' -f1 /proc/uptime)s"
while :; do
    /sbin/rmirror-agent
    sleep 0.2
done
EOF

# ---- the command agent ----------------------------------------------------------------------------------
cat > "$S/sbin/rmirror-agent" <<'EOF'
#!/bin/sh
# rmirror command agent. Protocol over the virtio-serial port named "rmirror.agent", one line each way:
#   host -> guest:  RMX <id> <timeout-seconds> <base64 of a sh script>
#   guest -> host:  RMR <id> <exit code> O:<base64 stdout> E:<base64 stderr>
# The script runs with sh in its own session (cwd /tmp, stdin /dev/null); after <timeout> seconds its
# whole session is killed (exit code 137). Lines that do not start with "RMX " are ignored (a line cut
# short while the port was closed).
set -f
port=
for f in $(find /sys/devices -path '*/vport*p*/name' 2>/dev/null); do
    d=${f%/name}
    [ "$(cat "$f" 2>/dev/null)" = rmirror.agent ] && port=/dev/${d##*/}
done
if [ -z "$port" ]; then
    have=$(find /sys/devices -path '*/vport*p*/name' 2>&1 | tr '\n' ' ')
    echo "rmirror-agent: no virtio port named rmirror.agent; have: $have" > /dev/kmsg
    sleep 5; exit 1
fi
W=/run/agent
mkdir -p $W
exec 3<>"$port" || exit 1
while IFS= read -r line <&3; do
    set -- $line
    [ $# -eq 4 ] && [ "$1" = RMX ] || continue
    id=$2; t=$3
    # Every fork and exec costs ~50 ms under TCG: no pipe, no extra shell, no base64 of empty output.
    printf '%s' "$4" > $W/cmd.b64
    if ! base64 -d < $W/cmd.b64 > $W/cmd.sh 2>/dev/null; then
        printf 'RMR %s 254 O: E:%s\n' "$id" "$(echo 'rmirror-agent: bad base64' | base64 -w0)" >&3
        continue
    fi
    (cd /tmp && exec setsid /bin/sh $W/cmd.sh) </dev/null >$W/out 2>$W/err &
    pid=$!
    ( sleep "$t" & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM; wait $s
      echo "rmirror-agent: command $id timed out after ${t}s, killing session $pid" > /dev/kmsg
      kill -9 -"$pid" 2>/dev/null ) &
    wd=$!
    wait $pid
    rc=$?
    kill $wd 2>/dev/null
    wait $wd 2>/dev/null
    o=; e=
    [ -s $W/out ] && o=$(base64 -w0 < $W/out)
    [ -s $W/err ] && e=$(base64 -w0 < $W/err)
    printf 'RMR %s %s O:%s E:%s\n' "$id" "$rc" "$o" "$e" >&3
done
EOF
chmod 0755 "$S/init" "$S/sbin/rmirror-agent"

{
    echo "rmirror rootfs $key built $(date -u +%FT%TZ)"
    dpkg-query -W -f='${Package} ${Version}\n' "${PKGS[@]}"
} > "$S/etc/rmirror-rootfs"

# ---- ext4 image, made without mounting --------------------------------------------------------------
kib=$(du -sk --apparent-size "$S" | cut -f1)
inodes=$(( $(find "$S" | wc -l) + 4096 ))
size_mib=$(( kib * 12 / 10 / 1024 + 32 ))
rm -f "$IMG.tmp.$$"
truncate -s "${size_mib}M" "$IMG.tmp.$$"
mke2fs -q -t ext4 -b 4096 -O ^has_journal -L rmirror-root -N "$inodes" -E root_owner=0:0 -d "$S" \
    -F "$IMG.tmp.$$" >&2 || die "mke2fs -d failed"
e2fsck -fn "$IMG.tmp.$$" >/dev/null 2>&1 || die "e2fsck of the new image failed"
mv "$IMG.tmp.$$" "$IMG"
cp "$S/etc/rmirror-rootfs" "$OUT/$key.manifest"
ln -sfn "$key.img" "$OUT/current.img"
# drop images of other inputs not used for two days (a running QEMU keeps its open file)
find "$OUT" -maxdepth 1 \( -name '*.img' -o -name '*.manifest' \) ! -name "$key.*" -atime +2 -delete 2>/dev/null || true
log "rootfs ready: $IMG (${size_mib} MiB, $(wc -l < "$OUT/$key.manifest") manifest lines)"
echo "$IMG"
