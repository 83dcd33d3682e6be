"""One patient's lumbar spine: its shape, its pose in the scanner and its severity grades.

The spine is built in the patient's own (body) axes: vertebral bodies and discs L1 to S1 on a lordotic
curve, possibly with a scoliotic lateral curve and axial twist, neural foramina and subarticular
recesses whose distance from the canal varies from person to person, level to level and side to side.
It is placed in the scanner slightly rotated. Grades are drawn with the real class mix, lower levels worse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lsdc import schema
from lsdc.synthetic.config import SyntheticConfig

SIDES = ("left", "right")
SIDE_SIGN = {"left": 1.0, "right": -1.0}  # LPS: +x is the patient's left

# Class mix of the real train.csv per group (Normal/Mild, Moderate, Severe).
CLASS_MIX: dict[str, tuple[float, float, float]] = {
    "spinal": (0.878, 0.075, 0.048),
    "foraminal": (0.780, 0.181, 0.040),
    "subarticular": (0.714, 0.190, 0.096),
}
# Degeneration is commoner at the lower levels (relative odds of moderate/severe per level).
LEVEL_ODDS = (0.45, 0.65, 1.0, 1.55, 1.35)


def _rotation(roll: float, yaw: float, pitch: float) -> np.ndarray:
    """Body -> world rotation (degrees): pitch about x, then yaw about y, then roll about z."""
    r, y, p = np.deg2rad([roll, yaw, pitch])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rz @ ry @ rx


@dataclass
class Anatomy:
    """One patient's lumbar spine, built in body coordinates and posed in the scanner.

    Body coordinates are the patient's own LPS axes in mm; ``pose`` turns them about ``pivot`` (the
    L3/L4 canal point) into the scanner's patient coordinates ("world"), where the DICOM geometry,
    the annotations and the planning landmarks live. The public point and frame methods answer in
    world coordinates; the ``body_*`` ones, used for painting, in body coordinates. Per-level arrays
    run L1/L2 to L5/S1; per-side columns follow ``SIDES``.
    """

    x0: float                     # canal centre x at the apex of the lateral curve
    y0: float                     # canal centre y at the apex of the lordosis
    z_apex: float                 # z of the apex of the lordosis
    curvature: float              # lordosis: y = y0 + k (z - z_apex)^2
    cobb_deg: float               # signed lateral curve: tilt of L1 minus tilt of S1 in the coronal plane
    z_scoliosis: float            # z of the apex of the lateral curve
    twist: float                  # apical axial rotation as a share of the Cobb angle
    canal_ap: np.ndarray          # (5,) canal radii (mm) when normal, per level
    canal_lr: np.ndarray          # (5,)
    disc_z: np.ndarray            # (5,) z of each disc centre, L1/L2 to L5/S1
    body_z: np.ndarray            # (6,) z of each vertebral body centre, L1 to S1
    body_h: np.ndarray            # (6,) body heights
    disc_h: np.ndarray            # (5,) disc heights
    body_depth: float
    body_width: float
    foramen_lat: np.ndarray       # (5, 2) lateral distance of the foramen from the canal centre
    foramen_ap: np.ndarray        # (5, 2) posterior shift of the foramen
    foramen_si: np.ndarray        # (5, 2) superior shift of the foramen
    recess_lat: np.ndarray        # (5, 2) lateral distance of the recess from the canal centre
    recess_ap: np.ndarray         # (5, 2) posterior shift of the recess
    recess_si: np.ndarray         # (5, 2) superior shift of the recess
    pose_deg: tuple[float, float, float]  # patient rotation: (roll about z, yaw about y, pitch about x)
    severity: dict[tuple[str, str], int]  # (condition, level) -> 0/1/2 (drawn even if the label is empty)
    pose: np.ndarray = field(init=False)  # (3, 3) body -> world rotation
    pivot: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.pose = _rotation(*self.pose_deg)
        self.pivot = self.body_centre(self.disc_z[2])

    # -- body coordinates

    def _lateral(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lateral offset of the canal centre and its slope: the coronal tilt grows linearly with z,
        so L1 and S1 differ by exactly the Cobb angle."""
        g = np.deg2rad(self.cobb_deg) / (self.body_z[0] - self.body_z[-1])
        if g == 0:
            return np.zeros_like(z), np.zeros_like(z)
        th = g * (z - self.z_scoliosis)
        return -np.log(np.cos(th)) / g, np.tan(th)

    def _twist(self, z: np.ndarray) -> np.ndarray:
        """Axial rotation (rad) of the vertebrae: largest at the curve's apex, towards its convexity."""
        ends = np.array([self.body_z[0], self.body_z[-1]])
        u, _ = self._lateral(z)
        ue, _ = self._lateral(ends)
        chord = ue[1] + (ue[0] - ue[1]) * (z - ends[1]) / (ends[0] - ends[1])
        return self.twist * 8.0 * (u - chord) / (ends[0] - ends[1])

    def body_centre(self, z: np.ndarray | float) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        u, _ = self._lateral(z)
        y = self.y0 + self.curvature * (z - self.z_apex) ** 2
        return np.stack([self.x0 + u, y, z], axis=-1)

    def body_frame(self, z: np.ndarray | float) -> np.ndarray:
        """(..., 3, 3): rows lateral (patient left), posterior, superior unit vectors at height z."""
        z = np.asarray(z, dtype=float)
        _, su = self._lateral(z)
        t = np.stack([su, 2 * self.curvature * (z - self.z_apex), np.ones_like(z)], axis=-1)
        t /= np.linalg.norm(t, axis=-1, keepdims=True)
        lat = np.array([1.0, 0.0, 0.0]) - t[..., :1] * t
        lat /= np.linalg.norm(lat, axis=-1, keepdims=True)
        post = np.cross(t, lat)
        w = self._twist(z)[..., None]
        lat, post = np.cos(w) * lat + np.sin(w) * post, -np.sin(w) * lat + np.cos(w) * post
        return np.stack([lat, post, t], axis=-2)

    def canal_radii(self, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Normal canal radii (AP, LR) at height z, interpolated between the discs."""
        zs = self.disc_z[::-1]
        return np.interp(z, zs, self.canal_ap[::-1]), np.interp(z, zs, self.canal_lr[::-1])

    def body_canal_point(self, level: int) -> np.ndarray:
        return self.body_centre(self.disc_z[level])

    def body_disc_centre(self, level: int) -> np.ndarray:
        z = self.disc_z[level]
        return self.body_centre(z) - self.body_frame(z)[1] * (self.canal_ap[level] + 2.5 + self.body_depth / 2)

    def body_foramen_point(self, level: int, side: str) -> np.ndarray:
        z, si = self.disc_z[level], SIDES.index(side)
        f = self.body_frame(z)
        return (self.body_centre(z) + SIDE_SIGN[side] * self.foramen_lat[level, si] * f[0]
                + (self.foramen_ap[level, si] - 1.5) * f[1] + (self.foramen_si[level, si] + 2.5) * f[2])

    def body_recess_point(self, level: int, side: str) -> np.ndarray:
        z, si = self.disc_z[level], SIDES.index(side)
        f = self.body_frame(z)
        return (self.body_centre(z) + SIDE_SIGN[side] * self.recess_lat[level, si] * f[0]
                + (0.35 * self.canal_ap[level] + self.recess_ap[level, si]) * f[1] + self.recess_si[level, si] * f[2])

    # -- world (scanner) coordinates

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - self.pivot) @ self.pose.T + self.pivot

    def frame(self, level: int) -> np.ndarray:
        """Rows: lateral (patient left), posterior, superior unit vectors at a disc, in world axes."""
        return self.body_frame(self.disc_z[level]) @ self.pose.T

    def canal_point(self, level: int) -> np.ndarray:
        """Canal centre at a disc: where spinal canal stenosis is annotated."""
        return self.to_world(self.body_canal_point(level))

    def disc_centre(self, level: int) -> np.ndarray:
        return self.to_world(self.body_disc_centre(level))

    def foramen_point(self, level: int, side: str) -> np.ndarray:
        return self.to_world(self.body_foramen_point(level, side))

    def recess_point(self, level: int, side: str) -> np.ndarray:
        return self.to_world(self.body_recess_point(level, side))


def draw_labels(rng: np.random.Generator) -> dict[tuple[str, str], int]:
    """Severity per (condition, level) with the real class mix, lower levels worse, per-study latent."""
    latent = float(np.exp(0.6 * rng.normal()))
    out = {}
    for cond in schema.CONDITIONS:
        p_norm, p_mod, p_sev = CLASS_MIX[schema.CONDITION_INFO[cond].group]
        for li, level in enumerate(schema.LEVELS):
            odds = LEVEL_ODDS[li] * latent / 1.19  # 1.19 ~ E[latent]: keeps the marginal mix
            mod, sev = min(p_mod * odds, 0.6), min(p_sev * odds, 0.35)
            out[(cond, level)] = int(rng.choice(3, p=[1 - mod - sev, mod, sev]))
    return out


def _small_angle(rng: np.random.Generator, max_deg: float) -> float:
    """A signed angle: mostly small, reaching ``max_deg`` in a few percent of studies."""
    return float(max_deg * np.clip(rng.normal(0.0, 0.4), -1.0, 1.0))


def make_anatomy(rng: np.random.Generator, cfg: SyntheticConfig | None = None) -> Anatomy:
    """One random spine. The draws are the same whatever the knobs, so a knob set to zero changes
    only its own variation."""
    cfg = cfg or SyntheticConfig()
    body_h = rng.uniform(24, 30, 6) * np.array([1.0, 1.02, 1.04, 1.05, 1.04, 1.1])
    disc_h = rng.uniform(*cfg.disc_h_mm, 5) * np.array([0.85, 0.95, 1.0, 1.05, 0.9])
    # Stack from L1 downward; z of L1's centre is random (table position).
    z = rng.uniform(-250, 50)
    body_z, disc_z = [], []
    for i in range(6):
        if i > 0:
            z -= body_h[i - 1] / 2 + disc_h[i - 1] / 2
            disc_z.append(z)
            z -= disc_h[i - 1] / 2 + body_h[i] / 2
        body_z.append(z)
    body_z_arr, disc_z_arr = np.array(body_z), np.array(disc_z)

    def dev(sd: float, shape: int | tuple[int, ...]) -> np.ndarray:
        return np.clip(rng.normal(0.0, 1.0, shape), -2.5, 2.5) * sd

    canal_ap = rng.uniform(*cfg.canal_ap_mm) * (1 + dev(cfg.canal_level_sd, 5))
    canal_lr = rng.uniform(*cfg.canal_lr_mm) * (1 + dev(cfg.canal_level_sd, 5))
    foramen_lat = (rng.uniform(*cfg.foramen_mm) + cfg.foramen_trend_mm * (np.arange(5) - 2)[:, None]
                   + dev(cfg.foramen_level_sd_mm, (5, 1)) + dev(cfg.foramen_side_sd_mm, (5, 2)))
    foramen_lat = np.clip(foramen_lat, canal_lr[:, None] + 5.0, 30.0)  # outside the canal, inside the arch
    foramen_ap = dev(cfg.foramen_shift_sd_mm, (5, 2))
    foramen_si = dev(cfg.foramen_shift_sd_mm, (5, 2))
    frac = np.clip(rng.uniform(*cfg.recess_frac) + dev(cfg.recess_sd, (5, 2)), 0.5, 0.92)
    recess_ap = dev(cfg.recess_shift_sd_mm, (5, 2))
    recess_si = dev(cfg.recess_shift_sd_mm, (5, 2))
    cobb = cfg.scoliosis_max_deg * rng.uniform() ** 2 * rng.choice([-1.0, 1.0])
    z_scoliosis = rng.uniform(disc_z_arr[3], disc_z_arr[1])
    pose = (_small_angle(rng, cfg.patient_roll_deg), _small_angle(rng, cfg.patient_yaw_deg),
            _small_angle(rng, cfg.patient_pitch_deg))
    return Anatomy(
        x0=float(rng.uniform(-12, 12)),
        y0=float(rng.uniform(-20, 40)),
        z_apex=float(disc_z_arr[2] + rng.uniform(-10, 10)),
        curvature=float(rng.uniform(0.0012, 0.0028)),
        cobb_deg=float(cobb),
        z_scoliosis=float(z_scoliosis),
        twist=cfg.scoliosis_twist,
        canal_ap=canal_ap,
        canal_lr=canal_lr,
        disc_z=disc_z_arr,
        body_z=body_z_arr,
        body_h=body_h,
        disc_h=disc_h,
        body_depth=float(rng.uniform(31, 37)),
        body_width=float(rng.uniform(46, 54)),
        foramen_lat=foramen_lat,
        foramen_ap=foramen_ap,
        foramen_si=foramen_si,
        recess_lat=np.maximum(frac * canal_lr[:, None], 5.0),
        recess_ap=recess_ap,
        recess_si=recess_si,
        pose_deg=pose,
        severity=draw_labels(rng),
    )
