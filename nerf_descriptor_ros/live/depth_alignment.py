"""Rigid alignment of the object's model points to what a depth camera sees (no ROS).

The depth steps of ``live/object_pose.py``:

* :func:`fit_rigid`: the least-squares rigid transform between paired points (Kabsch).
* :func:`depth_ransac`: rigid fits to three matched (model point, back-projected match) pairs at a
  time, MSAC-scored with a fixed seed, the best refitted on its inliers until they settle. Matches
  a few pixels off still land within a centimetre, where a pixel threshold would drop them.
* :func:`joint_refine`: Gauss-Newton on the pixel inliers' reprojection errors and the depth
  inliers' 3D residuals together.
* :func:`icp_refine`: point-to-plane ICP of the model points against the surface of the depth
  image near the object (normals from the image grid, nearest neighbours in a k-d tree, the
  pairing distance shrinking). It needs no descriptor at all, so it reaches past what the matches'
  pixel errors allow once they have brought the pose within about a centimetre.

Poses are ``T`` with ``camera point = T @ model point``; small motions are applied on the left.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    fit_similarity,
    grid_normals,
    rigid_from_vector,
    transform_points,
)

RANSAC_SEED = 0
SETTLE_ROUNDS = 5
ICP_ROUNDS = 6
ICP_SCHEDULE = (1.0, 0.5, 0.3)  # pairing distances, as fractions of the first
ICP_NEIGHBOURHOOD_M = 0.02  # depth points this far beyond the model points' extent are left out
NORMAL_MAX_STEP_M = 0.01  # neighbouring depth points further apart are a depth edge: no normal


def fit_rigid(source: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """Least-squares rigid transform (4x4) with ``target ~ T @ source`` for N >= 3 point pairs;
    None when the points are (nearly) collinear, which leaves a rotation undetermined."""
    fit = fit_similarity(source, target, with_scale=False)
    if fit is None:
        return None
    _, R, t = fit
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def depth_residuals(T: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Distance of each moved model point from its observed point; inf where none was observed."""
    with np.errstate(invalid="ignore"):
        residual = np.linalg.norm(transform_points(T, X) - Y, axis=1)
    return np.where(np.isfinite(residual), residual, np.inf)


def depth_ransac(
    X: np.ndarray, Y: np.ndarray, threshold_m: float, iterations: int, min_inliers: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(T, inlier mask) of the model points ``X`` onto their observed points ``Y`` (NaN: none), or
    None when fewer than ``min_inliers`` agree within ``threshold_m``."""
    observed = np.flatnonzero(np.isfinite(Y).all(1) & np.isfinite(X).all(1))
    if len(observed) < max(min_inliers, 3):
        return None
    Xo, Yo = X[observed], Y[observed]
    rng = np.random.default_rng(RANSAC_SEED)
    samples = np.argpartition(rng.random((iterations, len(observed))), 3, axis=1)[:, :3]
    A, B = Xo[samples], Yo[samples]  # (hypotheses, 3 points, xyz)
    A0, B0 = A - A.mean(1, keepdims=True), B - B.mean(1, keepdims=True)
    U, S, Vt = np.linalg.svd(A0.transpose(0, 2, 1) @ B0)
    V, Ut = Vt.transpose(0, 2, 1), U.transpose(0, 2, 1)
    flip = np.ones((len(samples), 3))
    flip[:, 2] = np.where(np.linalg.det(V @ Ut) < 0, -1.0, 1.0)
    R = (V * flip[:, None, :]) @ Ut
    t = B.mean(1) - np.einsum("kij,kj->ki", R, A.mean(1))
    residual = np.linalg.norm(np.einsum("kij,nj->kni", R, Xo) + t[:, None, :] - Yo[None], axis=2)
    cost = (np.minimum(residual, threshold_m) ** 2).sum(1)
    cost[S[:, 1] <= 1e-3 * S[:, 0]] = np.inf  # three (nearly) collinear points fix no rotation
    keep = residual[int(np.argmin(cost))] <= threshold_m
    for _ in range(SETTLE_ROUNDS):
        T = fit_rigid(Xo[keep], Yo[keep]) if keep.sum() >= min_inliers else None
        if T is None:
            return None
        settled = depth_residuals(T, Xo, Yo) <= threshold_m
        if np.array_equal(settled, keep):
            break
        keep = settled
    if keep.sum() < min_inliers:
        return None
    mask = np.zeros(len(X), dtype=bool)
    mask[observed[keep]] = True
    return T, mask


def joint_refine(
    T: np.ndarray,
    X: np.ndarray,
    uv: np.ndarray,
    Y: np.ndarray,
    pixel_inliers: np.ndarray,
    depth_inliers: np.ndarray,
    intrinsics: CameraIntrinsics,
    iterations: int = 10,
) -> np.ndarray:
    """Gauss-Newton on the reprojection errors of the pixel inliers and the 3D residuals of the
    depth inliers together, each kind weighted by its own RMS at the start (pixels pin the position
    across the view, depth the distance along it)."""

    def residuals(T):
        cam_px, cam_d = transform_points(T, X[pixel_inliers]), transform_points(T, X[depth_inliers])
        projected, _ = intrinsics.project(cam_px)
        return cam_px, cam_d, (projected - uv[pixel_inliers]).reshape(-1), (cam_d - Y[depth_inliers]).reshape(-1)

    _, _, r_px, r_d = residuals(T)
    # Per pixel and per point, not per coordinate; floors for an exact fit.
    sigma_px = max(float(np.sqrt(np.mean(np.square(r_px)) * 2)), 0.3) if len(r_px) else 1.0
    sigma_d = max(float(np.sqrt(np.mean(np.square(r_d)) * 3)), 5e-4) if len(r_d) else 1.0
    for _ in range(iterations):
        cam_px, cam_d, r_px, r_d = residuals(T)
        x, y, z = cam_px.T
        J_proj = np.zeros((len(cam_px), 2, 3))
        J_proj[:, 0, 0], J_proj[:, 0, 2] = intrinsics.fx / z, -intrinsics.fx * x / z**2
        J_proj[:, 1, 1], J_proj[:, 1, 2] = intrinsics.fy / z, -intrinsics.fy * y / z**2
        # A point p moves by w x p + t = -[p]x w + t for a small rotation w and translation t.
        J_px = np.concatenate([J_proj @ -_skew(cam_px), J_proj], axis=2).reshape(-1, 6) / sigma_px
        J_d = np.concatenate([-_skew(cam_d), np.broadcast_to(np.eye(3), (len(cam_d), 3, 3))], axis=2).reshape(-1, 6)
        step = np.linalg.lstsq(
            np.concatenate([J_px, J_d / sigma_d]), -np.concatenate([r_px / sigma_px, r_d / sigma_d]), rcond=None
        )[0]
        T = rigid_from_vector(step[:3], step[3:]) @ T
        if np.linalg.norm(step) < 1e-10:
            break
    return T


def icp_refine(
    T: np.ndarray,
    X: np.ndarray,
    depth: np.ndarray,
    intrinsics: CameraIntrinsics,
    max_distance_m: float,
    min_pairs: int,
    normal_step_px: int = 3,
) -> tuple[np.ndarray, int, float] | None:
    """(T, pairs, their point-to-plane RMS in metres) after ICP of the model points ``X`` against
    the depth image's surface (``intrinsics`` are the colour camera's; a depth image of another size
    is registered to it and scaled; normals from the points ``normal_step_px`` pixels across and
    down); None when fewer than ``min_pairs`` pair up, or when ICP moved the points' centroid more
    than twice ``max_distance_m`` (it slid off: the start was too far)."""
    X = np.asarray(X, dtype=np.float64)
    X = X[np.isfinite(X).all(1)]
    height, width = depth.shape
    if (width, height) != (intrinsics.width, intrinsics.height):
        intrinsics = intrinsics.scaled(width, height)
    cloud = intrinsics.backproject_image(np.asarray(depth, dtype=np.float64))
    normals = grid_normals(cloud, normal_step_px, NORMAL_MAX_STEP_M)
    predicted = transform_points(T, X)
    centre = predicted.mean(0)
    reach = float(np.linalg.norm(predicted - centre, axis=1).max()) + ICP_NEIGHBOURHOOD_M
    with np.errstate(invalid="ignore"):
        near = np.isfinite(normals).all(2) & (np.linalg.norm(cloud - centre, axis=2) <= reach)
    if near.sum() < min_pairs:
        return None
    P, N = cloud[near], normals[near]
    tree = cKDTree(P)
    for fraction in ICP_SCHEDULE:
        for _ in range(ICP_ROUNDS):
            source = transform_points(T, X)
            distance, j = tree.query(source, distance_upper_bound=fraction * max_distance_m)
            paired = np.isfinite(distance)
            if paired.sum() < min_pairs:
                return None
            s, q, n = source[paired], P[j[paired]], N[j[paired]]
            residual = np.einsum("ij,ij->i", n, s - q)
            # n . (s + w x s + t - q) = r + w . (s x n) + n . t
            step = np.linalg.lstsq(np.concatenate([np.cross(s, n), n], axis=1), -residual, rcond=None)[0]
            T = rigid_from_vector(step[:3], step[3:]) @ T
            if np.linalg.norm(step) < 1e-7:
                break
    source = transform_points(T, X)
    if np.linalg.norm(source.mean(0) - centre) > 2 * max_distance_m:
        return None
    distance, j = tree.query(source, distance_upper_bound=ICP_SCHEDULE[-1] * max_distance_m)
    paired = np.isfinite(distance)
    if paired.sum() < min_pairs:
        return None
    residual = np.einsum("ij,ij->i", N[j[paired]], source[paired] - P[j[paired]])
    return T, int(paired.sum()), float(np.sqrt(np.mean(np.square(residual))))


def _skew(p: np.ndarray) -> np.ndarray:
    """(N, 3, 3) cross-product matrices [p]x of (N, 3) vectors."""
    out = np.zeros((len(p), 3, 3))
    out[:, 0, 1], out[:, 0, 2], out[:, 1, 2] = -p[:, 2], p[:, 1], -p[:, 0]
    out[:, 1, 0], out[:, 2, 0], out[:, 2, 1] = p[:, 2], -p[:, 1], p[:, 0]
    return out
