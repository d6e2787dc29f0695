#!/usr/bin/env bash
# Installs the Debian packages that headless napari tests need (Xvfb, OpenGL, Qt's xcb plugin).
# Does nothing when they are all present; needs root (or sudo) otherwise.
set -euo pipefail
pkgs=(xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon0 libxkbcommon-x11-0
      libdbus-1-3 libfontconfig1 fonts-dejavu-core libglib2.0-0 libx11-xcb1 libxcb1 libxcb-icccm4
      libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0
      libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
