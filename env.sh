#!/usr/bin/env bash
# ./env.sh CMD...  runs CMD inside the built environment (venv, .ros2_tools and the colcon install sourced).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f "$ROOT/install/setup.sh" ] || [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "env.sh: the environment is not built yet; run 'make setup' first" >&2
  exit 1
fi
source "$ROOT/tools/ros_env.sh"
ros_env_activate "$ROOT/.venv"
ros2_tools_activate
set +u
# shellcheck source=/dev/null
COLCON_CURRENT_PREFIX="$ROOT/install" source "$ROOT/install/setup.sh"
set -u
export NDR_ROOT="$ROOT"
# Camera-sized best-effort images need bigger DDS buffers (see the profile's comment).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds_large_images.xml}"
if [ "${ROS_DISTRO:-}" = humble ]; then  # Fast DDS 2.6 reads the older name
  export FASTRTPS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-$FASTDDS_DEFAULT_PROFILES_FILE}"
fi
[ $# -gt 0 ] || { echo "usage: ./env.sh CMD [ARGS...]" >&2; exit 2; }
exec "$@"
