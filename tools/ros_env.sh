# Sourced by tools/setup.sh and env.sh: finds a system ROS 2 and activates the environment.
# shellcheck shell=bash

SYSTEM_ROS_SETUP=""
if [ "${NDR_IGNORE_SYSTEM_ROS:-0}" != "1" ]; then
  for distro in ${ROS_DISTRO:-} kilted jazzy humble rolling; do
    if [ -f "/opt/ros/$distro/setup.bash" ]; then SYSTEM_ROS_SETUP="/opt/ros/$distro/setup.bash"; break; fi
  done
fi

# The ROS 2 tools the registries lack (ros2 launch, the ros2 CLI, tf2_ros): without a system ROS,
# tools/setup.sh builds them from the upstream sources in ROS2_TOOLS_SRC into ROS2_TOOLS_PREFIX.
_ndr_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROS2_TOOLS_SRC="$_ndr_repo/../shared/ros2_tools"
ROS2_TOOLS_PREFIX="$_ndr_repo/.ros2_tools"
unset _ndr_repo

# ros_env_activate <venv>: the system ROS (if any), then the venv, as a ROS prefix when it holds ROS.
ros_env_activate() {
  local venv=$1
  if [ -n "$SYSTEM_ROS_SETUP" ]; then
    set +u; source "$SYSTEM_ROS_SETUP"; set -u
  fi
  export VIRTUAL_ENV="$venv"
  export PATH="$venv/bin:$PATH"
  if [ -z "$SYSTEM_ROS_SETUP" ]; then
    export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
    export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  fi
}

# ros2_tools_activate: without a system ROS, puts the tools built into ROS2_TOOLS_PREFIX (if any) on the path.
ros2_tools_activate() {
  local prefix="$ROS2_TOOLS_PREFIX/install"
  if [ -z "$SYSTEM_ROS_SETUP" ] && [ -f "$prefix/local_setup.sh" ]; then
    set +u
    # shellcheck source=/dev/null
    COLCON_CURRENT_PREFIX="$prefix" source "$prefix/local_setup.sh"
    set -u
  fi
}
