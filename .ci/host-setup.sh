#!/usr/bin/env bash
# Make this host able to run novaconsole's full test suite: the Debian packages the lab
# and the hypervisor-side extras need, and the MariaDB and RabbitMQ servers, started if
# they are down. Idempotent; prints one line per action. Needs root for installs.
set -euo pipefail

say() { printf 'host-setup: %s\n' "$*"; }

need=()
have() { [ -e "$1" ]; }
have /usr/include/libvirt/libvirt.h || need+=(libvirt-dev)
have /usr/bin/pkg-config || need+=(pkg-config)
have /usr/sbin/libvirtd || need+=(libvirt-daemon-system)
have /usr/bin/qemu-system-x86_64 || need+=(qemu-system-x86)
have /usr/bin/qemu-img || need+=(qemu-utils)
have /usr/bin/memcached || need+=(memcached)
have /usr/share/novnc/vnc_lite.html || need+=(novnc)
have /usr/sbin/mariadbd || need+=(mariadb-server)
have /usr/sbin/rabbitmq-server || need+=(rabbitmq-server)
command -v tmux >/dev/null || need+=(tmux)
# Tests check the lab guest's initramfs writer against GNU cpio (the lab itself needs no cpio).
command -v cpio >/dev/null || need+=(cpio)
# The console bridge's browser tests drive noVNC in Debian's headless Chromium.
have /usr/bin/chromium || need+=(chromium)
have /usr/bin/chromedriver || need+=(chromium-driver)
# The console's Sixel encoder is checked against libsixel's decoder (sixel2png).
command -v sixel2png >/dev/null || need+=(libsixel-bin)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${need[*]} (run as root or install them)"; exit 2
  fi
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 3306; then
  say "starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 60); do port_open 3306 && break; sleep 1; done
  port_open 3306 || { say "MariaDB did not start on 127.0.0.1:3306"; exit 2; }
fi

if ! port_open 5672; then
  say "starting RabbitMQ"
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
    rabbitmq-server -detached
  for _ in $(seq 90); do port_open 5672 && break; sleep 1; done
  port_open 5672 || { say "RabbitMQ did not start on 127.0.0.1:5672"; exit 2; }
fi
say "ok: MariaDB on 127.0.0.1:3306, RabbitMQ on 127.0.0.1:5672, lab packages present"
