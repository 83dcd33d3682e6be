"""Painting an anatomy into a label volume in body coordinates: tissues, the canal narrowed at stenotic
discs, foramina and recesses narrowed on the side their label says."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lsdc import schema
from lsdc.synthetic.anatomy import SIDE_SIGN, SIDES, Anatomy

# Tissue labels painted into the volume, with (T1, T2, STIR) relative intensities.
AIR, FAT, MUSCLE, MARROW, BONE, NUCLEUS, ANNULUS, CSF, NERVE, LIGAMENT, ORGAN = range(11)
TISSUE_CONTRAST = np.array(
    [
        [0.00, 0.00, 0.00],  # air
        [0.95, 0.70, 0.08],  # fat
        [0.33, 0.22, 0.22],  # muscle
        [0.62, 0.45, 0.25],  # vertebral marrow
        [0.07, 0.07, 0.07],  # cortical bone
        [0.38, 0.82, 0.75],  # disc nucleus
        [0.28, 0.30, 0.28],  # annulus
        [0.14, 1.00, 1.00],  # CSF
        [0.38, 0.35, 0.35],  # nerve roots
        [0.12, 0.10, 0.12],  # ligament / disc bulge / facet hypertrophy (stenotic tissue)
        [0.45, 0.48, 0.42],  # abdominal soft tissue
    ],
    dtype=np.float32,
)
CONTRAST_COLUMN = {"T1": 0, "T2": 1, "STIR": 2}
SEVERITY_FACTOR = (1.0, 0.62, 0.30)  # how much of a structure's calibre is left, by severity


@dataclass
class Volume:
    """A label volume on a regular grid in body coordinates: voxel (i, j, k) sits at origin + vox * (i, j, k);
    world points map to body ones through the anatomy's pose (world = pose (body - pivot) + pivot)."""

    origin: np.ndarray
    vox: float
    labels: np.ndarray  # uint8 (nx, ny, nz)
    pose: np.ndarray = field(default_factory=lambda: np.eye(3))
    pivot: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Voxel index (float) of world points (..., 3)."""
        body = (np.asarray(points) - self.pivot) @ self.pose + self.pivot
        return (body - self.origin) / self.vox

    def direction_to_index(self, v: np.ndarray) -> np.ndarray:
        """Voxel steps of a world direction (..., 3) of one mm."""
        return (np.asarray(v) @ self.pose) / self.vox


def _box(vol: Volume, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice, np.ndarray]:
    """Index box around a sphere and the body coordinates of its voxels (..., 3)."""
    lo = np.floor((centre - radius - vol.origin) / vol.vox).astype(int)
    hi = np.ceil((centre + radius - vol.origin) / vol.vox).astype(int) + 1
    lo = np.clip(lo, 0, vol.labels.shape)
    hi = np.clip(hi, 0, vol.labels.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    axes = [(vol.origin[d] + vol.vox * np.arange(lo[d], hi[d])).astype(np.float32) for d in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return sl[0], sl[1], sl[2], pts


def paint_ellipsoid(vol: Volume, centre: np.ndarray, frame: np.ndarray, radii: tuple[float, float, float],
                    label: int, power: float = 2.0) -> None:
    """Set ``label`` inside a (super-)ellipsoid with semi-axes ``radii`` along the rows of ``frame`` (body)."""
    r = np.asarray(radii, dtype=float)
    sx, sy, sz, pts = _box(vol, centre, float(r.max()))
    if pts.size == 0:
        return
    local = (pts - centre.astype(np.float32)) @ (frame.T / r).astype(np.float32)
    inside = (np.abs(local) ** power).sum(-1) <= 1.0
    vol.labels[sx, sy, sz][inside] = label


def _index_range(axis0: float, vox: float, n: int, lo: float, hi: float) -> tuple[int, int]:
    """Voxel index range [a, b) covering body coordinates [lo, hi] along one axis."""
    a = int(np.clip(np.floor((lo - axis0) / vox), 0, n))
    b = int(np.clip(np.ceil((hi - axis0) / vox) + 1, 0, n))
    return a, b


def paint_canal(vol: Volume, a: Anatomy) -> None:
    """Epidural fat, dural sac (CSF) narrowed at stenotic discs, stenotic tissue and nerve roots.

    Each voxel is placed in the cross-section of the canal at its own height (lateral and posterior
    coordinates in the local frame), inside a box around the canal only.
    """
    nx, ny, nz = vol.labels.shape
    k0, k1 = _index_range(vol.origin[2], vol.vox, nz, a.body_z[-1] + 5, a.body_z[0] + 60)  # the sac ends in S1
    zs = vol.origin[2] + vol.vox * np.arange(k0, k1)
    c = a.body_centre(zs)
    f = a.body_frame(zs).astype(np.float32)
    r_ap0, r_lr0 = a.canal_radii(zs)
    pad = float(max(r_ap0.max(), r_lr0.max())) + 8.0
    i0, i1 = _index_range(vol.origin[0], vol.vox, nx, c[:, 0].min() - pad, c[:, 0].max() + pad)
    j0, j1 = _index_range(vol.origin[1], vol.vox, ny, c[:, 1].min() - pad, c[:, 1].max() + pad)
    xs = (vol.origin[0] + vol.vox * np.arange(i0, i1)).astype(np.float32)
    ys = (vol.origin[1] + vol.vox * np.arange(j0, j1)).astype(np.float32)
    dx = xs[:, None, None] - c[None, None, :, 0].astype(np.float32)
    dy = ys[None, :, None] - c[None, None, :, 1].astype(np.float32)
    dl = dx * f[:, 0, 0] + dy * f[:, 0, 1]   # local lateral and posterior coordinates
    dp = dx * f[:, 1, 0] + dy * f[:, 1, 1]
    cond = schema.condition_for("spinal")
    narrowing = np.zeros_like(zs)
    for li, level in enumerate(schema.LEVELS):
        lost = 1.0 - SEVERITY_FACTOR[a.severity[(cond, level)]]
        narrowing = np.maximum(narrowing, lost * np.exp(-(((zs - a.disc_z[li]) / (0.55 * a.disc_h[li] + 2.5)) ** 2)))
    narrowing = narrowing.astype(np.float32)
    r_ap0, r_lr0 = r_ap0.astype(np.float32), r_lr0.astype(np.float32)
    r_ap, r_lr = r_ap0 * (1 - narrowing), r_lr0 * (1 - 0.45 * narrowing)
    normal = (dl / r_lr0) ** 2 + (dp / r_ap0) ** 2 <= 1
    fat = (dl / (r_lr0 + 2.5)) ** 2 + (dp / (r_ap0 + 2.0)) ** 2 <= 1
    sac = (dl / r_lr) ** 2 + (dp / r_ap) ** 2 <= 1
    lab = vol.labels[i0:i1, j0:j1, k0:k1]
    lab[fat] = FAT
    lab[normal] = LIGAMENT          # what the narrowing takes, bulging disc and thick ligament
    lab[sac] = CSF
    # A few cauda equina roots: thin dark strands inside the sac, in its posterior half.
    for off_l, off_p in ((-3.0, 2.5), (3.0, 2.5), (-1.2, 4.0), (1.2, 4.0)):
        root = ((dl - off_l) ** 2 + (dp - off_p * (1 - narrowing)) ** 2 <= 0.8 ** 2) & sac
        lab[root] = NERVE


def _torso_plane(a: Anatomy, xs: np.ndarray, ys: np.ndarray, y_mid: float) -> np.ndarray:
    """One axial plane of the torso: abdominal soft tissue in front, back muscles and psoas, a fat
    layer under the skin, air behind; x relative to the canal."""
    dx = (xs - a.x0)[:, None]
    dyb = (ys - y_mid)[None, :]
    skin = 70.0
    back = (dyb > -10) & (np.abs(dx) < 48)
    muscle = back & (dyb < skin - 14)
    fat = (dyb >= skin - 14) & (dyb < skin)
    air = dyb >= skin
    psoas = ((np.abs(dx) - 30) ** 2 / 12 ** 2 + (dyb + 35) ** 2 / 14 ** 2) <= 1
    shape = (len(xs), len(ys))
    plane = np.full(shape, ORGAN, dtype=np.uint8)
    plane[np.broadcast_to(muscle | psoas, shape)] = MUSCLE
    plane[np.broadcast_to(fat, shape)] = FAT
    plane[np.broadcast_to(air, shape)] = AIR
    return plane


def paint_study(a: Anatomy, vox: float) -> Volume:
    """Paint the whole lumbar region of one patient into a label volume (body coordinates)."""
    top, bottom = a.body_z[0] + 45, a.body_z[-1] - 45
    y_mid = float(a.body_centre(a.disc_z[2])[1])
    zs_probe = np.linspace(bottom, top, 64)
    cx = a.body_centre(zs_probe)[:, 0]
    origin = np.array([cx.min() - 52, y_mid - 135, bottom])
    shape = np.ceil(np.array([cx.max() - cx.min() + 104, 225, top - bottom]) / vox).astype(int) + 1
    vol = Volume(origin=origin, vox=vox, labels=np.empty(tuple(shape), dtype=np.uint8), pose=a.pose, pivot=a.pivot)
    nx, ny, nz = shape
    # The torso follows the lateral curve: each axial plane is the same plane shifted by whole voxels.
    zs = origin[2] + vox * np.arange(nz)
    shift = np.round((a.body_centre(zs)[:, 0] - a.x0) / vox).astype(int)
    margin = int(np.abs(shift).max()) + 1
    xs_wide = origin[0] + vox * np.arange(-margin, nx + margin)
    plane = _torso_plane(a, xs_wide, origin[1] + vox * np.arange(ny), y_mid)
    for k in range(nz):
        vol.labels[:, :, k] = plane[margin - shift[k]: margin - shift[k] + nx]

    for bi in range(6):  # vertebral bodies: cortical shell, marrow inside
        z = a.body_z[bi]
        f = a.body_frame(z)
        cen = a.body_centre(z)
        ap, lr = (float(v) for v in a.canal_radii(z))
        c = cen - f[1] * (ap + 2.5 + a.body_depth / 2)
        half = (a.body_width / 2, a.body_depth / 2, a.body_h[bi] / 2)
        paint_ellipsoid(vol, c, f, half, BONE, power=3.0)
        paint_ellipsoid(vol, c, f, tuple(h - 1.6 for h in half), MARROW, power=3.0)
        # Posterior arch: pedicles (seen on parasagittal slices above and below each foramen, so they
        # sit where the neighbouring foramina do), lamina and spinous process behind the canal.
        near = [li for li in (bi - 1, bi) if 0 <= li < 5]
        for si, side in enumerate(SIDES):
            lat = float(np.mean(a.foramen_lat[near, si]))
            post = float(np.mean(a.foramen_ap[near, si]))
            pc = cen + SIDE_SIGN[side] * lat * f[0] + (post - 0.5) * f[1] + 1.5 * f[2]
            paint_ellipsoid(vol, pc, f, (6.0, 8.0, 0.32 * a.body_h[bi]), BONE)
            paint_ellipsoid(vol, pc, f, (4.5, 6.5, 0.32 * a.body_h[bi] - 1.5), MARROW)
        paint_ellipsoid(vol, cen + (ap + 6) * f[1] + 3 * f[2], f, (lr + 4, 4.0, 0.35 * a.body_h[bi]), BONE)
        paint_ellipsoid(vol, cen + (ap + 26) * f[1] + 2 * f[2], f, (3.5, 18.0, 7.0), BONE)
    for li, level in enumerate(schema.LEVELS):  # discs, foramina, facets and recesses
        z = a.disc_z[li]
        f = a.body_frame(z)
        cen = a.body_centre(z)
        c = a.body_disc_centre(li)
        half = (a.body_width / 2 - 1, a.body_depth / 2 + 0.8, a.disc_h[li] / 2)
        paint_ellipsoid(vol, c, f, half, ANNULUS, power=2.5)
        paint_ellipsoid(vol, c + 2 * f[1], f, (half[0] * 0.55, half[1] * 0.55, half[2] * 0.6), NUCLEUS)
        for si, side in enumerate(SIDES):
            s = SIDE_SIGN[side]
            # Facet joint behind the foramen and lateral to the recess: grows as the recess narrows.
            sev_sub = a.severity[(schema.condition_for("subarticular", side), level)]
            lat = a.recess_lat[li, si] + 0.55 * (a.foramen_lat[li, si] - a.recess_lat[li, si])
            facet_c = (cen + s * lat * f[0] + (a.canal_ap[li] + 3.0 + 0.5 * a.foramen_ap[li, si]) * f[1]
                       + 0.5 * a.foramen_si[li, si] * f[2])
            grow = 1.0 + 0.45 * sev_sub
            paint_ellipsoid(vol, facet_c, f, (6.0 * grow, 6.0 * grow, 9.0), BONE)
            # Foramen: a keyhole of fat with the exiting root, narrowed by the severity.
            sev_for = a.severity[(schema.condition_for("foraminal", side), level)]
            k = SEVERITY_FACTOR[sev_for]
            fc = a.body_foramen_point(li, side)
            paint_ellipsoid(vol, fc, f, (6.0, 6.5, 8.5), LIGAMENT)
            paint_ellipsoid(vol, fc - (1 - k) * 2.5 * f[1], f, (5.5, 6.0 * k, 8.0 * k), FAT)
            paint_ellipsoid(vol, fc + 8.0 * k * 0.45 * f[2], f, (5.0, 1.8, 1.8 * min(1.0, 1.3 * k)), NERVE)
    paint_canal(vol, a)
    for li, level in enumerate(schema.LEVELS):  # lateral recesses: CSF pockets narrowed by the facet
        f = a.body_frame(a.disc_z[li])
        for side in SIDES:
            s = SIDE_SIGN[side]
            sev = a.severity[(schema.condition_for("subarticular", side), level)]
            k = SEVERITY_FACTOR[sev]
            rc = a.body_recess_point(li, side)
            paint_ellipsoid(vol, rc, f, (4.0, 3.6, 6.0), LIGAMENT)
            paint_ellipsoid(vol, rc - s * (1 - k) * 2.0 * f[0], f, (3.6 * k, 3.2 * k, 5.5), CSF)
            if sev:  # the hypertrophic facet and ligament push into that side of the sac
                grow = 1.0 - k
                paint_ellipsoid(vol, rc + s * 2.0 * f[0] + 2.0 * f[1], f, (2.0 + 5.0 * grow, 2.0 + 4.0 * grow, 6.0),
                                LIGAMENT)
    return vol
