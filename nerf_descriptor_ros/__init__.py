"""Self-supervised dense object descriptors for robot arms (NeRF-Supervision + Dense Object Nets).

The subpackages other than ``nodes`` import no ROS: the geometry, dataset, simulation, NeRF,
correspondence, descriptor and evaluation code runs in plain Python.
"""

import pkgutil

# The generated msg/srv/action modules are installed beside this package by colcon; when the
# source checkout shadows the installed copy on sys.path (running from the repository root),
# this lets ``nerf_descriptor_ros.msg`` still resolve to the installed modules.
__path__ = pkgutil.extend_path(__path__, __name__)
