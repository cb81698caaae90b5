#!/usr/bin/env bash
# A throw-away systemd machine for tests: systemd as PID 1 of its own PID and mount
# namespaces, over a copy-on-write view of this machine's root (overlayfs, the upper layer
# on tmpfs). Nothing it writes reaches the real file system, except SHARED_DIR, which is
# bind-mounted at the same path. The network is the host's (127.0.0.1 services answer).
#
# Run it as root under: unshare --pid --fork --mount --propagation private -- THIS WORK_DIR [SHARED_DIR]
# Stop it by killing its PID 1 (the whole namespace goes with it).
#
# The host's own units are hidden (its /etc/systemd/system and every *.wants directory of
# /lib/systemd/system are removed in the overlay): systemd boots an empty target and runs
# only what a test installs, so no host daemon or boot-time job (tmpfiles cleaning /tmp,
# sysctl) runs twice.
set -euo pipefail

work="$1"
shared="${2:-}"

[ "$$" = 1 ] || { echo "systemd-container: must run as PID 1 of a new PID namespace" >&2; exit 2; }
mkdir -p "$work"
mount -t tmpfs -o mode=0755 novaconsole-systemd "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
root="$work/root"
[ "$(stat -f -c %T "$root")" = overlayfs ] || { echo "systemd-container: overlay not mounted at $root" >&2; exit 2; }

mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
if [ -n "$shared" ]; then
  mkdir -p "$root$shared"
  mount --bind "$shared" "$root$shared"
fi

# Only in the overlay: whiteouts hide the host's enabled units and boot-time wants.
rm -rf "$root"/etc/systemd/system/* "$root"/usr/lib/systemd/system/*.wants
: > "$root/etc/fstab"
cat > "$root/etc/systemd/system/novaconsole-test-empty.target" <<'UNIT'
[Unit]
Description=novaconsole test machine (nothing but what a test installs)
UNIT
ln -s novaconsole-test-empty.target "$root/etc/systemd/system/default.target"

cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot 2>/dev/null || true
export container=novaconsole-test
exec /lib/systemd/systemd --system --log-target=console --log-level=notice
