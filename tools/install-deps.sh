#!/usr/bin/env bash
# Installs everything bitsd needs to build, test and benchmark on Debian 12.
set -euo pipefail

pkgs=(
  # build
  meson ninja-build pkg-config gcc libsystemd-dev libcurl4-openssl-dev libsqlite3-dev
  # sanitizer runtime for the asan build
  libclang-rt-14-dev
  # hermetic test harness: bus, polkit, users, HTTP
  dbus dbus-daemon polkitd systemd util-linux nginx-light curl
  python3 python3-dbus python3-gi libglib2.0-bin
  # benchmarks
  aria2
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
