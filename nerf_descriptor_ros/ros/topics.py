"""The package's topic names, in one place: nodes publish and subscribe them relative, so a
namespace or a remapping (e.g. onto a camera driver's topics) applies to every node alike."""

IMAGE = "camera/color/image_raw"
CAMERA_INFO = "camera/color/camera_info"
DEPTH = "camera/depth/image_raw"
MASK = "camera/mask/image_raw"
CAMERA_POSE = "camera/pose"
JOINT_STATES = "joint_states"
DESCRIPTORS = "descriptors/image"
DESCRIPTOR_COLOURS = "descriptors/visualization"
KEYPOINT_MATCHES = "keypoints/matches"
KEYPOINT_MARKERS = "keypoints/markers"
GRASP_TARGET = "grasp/target"
