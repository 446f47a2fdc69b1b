# Sourced by tools/setup.sh and env.sh: finds a system ROS 2 and activates the environment.
# shellcheck shell=bash

SYSTEM_ROS_SETUP=""
if [ "${NDR_IGNORE_SYSTEM_ROS:-0}" != "1" ]; then
  for distro in ${ROS_DISTRO:-} kilted jazzy humble rolling; do
    if [ -f "/opt/ros/$distro/setup.bash" ]; then SYSTEM_ROS_SETUP="/opt/ros/$distro/setup.bash"; break; fi
  done
fi

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
