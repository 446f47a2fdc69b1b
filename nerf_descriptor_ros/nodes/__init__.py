"""ROS 2 nodes: thin adapters around the ROS-free core, one class per node."""
