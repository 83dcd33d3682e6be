"""Geometry on hand-computed cases."""

import numpy as np
import pytest

from lsdc.geometry import SliceGeometry, nearest_slice, patient_to_pixel, pixel_to_patient, slice_normal

SAG = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
AX = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_normals():
    np.testing.assert_allclose(slice_normal(SAG), [-1, 0, 0])
    np.testing.assert_allclose(slice_normal(AX), [0, 0, 1])


def test_pixel_to_patient_hand_computed():
    # Row spacing 0.5 mm, column spacing 0.8 mm: pixel (x=10, y=4) on a sagittal slice at IPP (5, -100, 50):
    # x moves along +y (posterior) by 10*0.8 = 8, y moves along -z by 4*0.5 = 2.
    g = SliceGeometry((5.0, -100.0, 50.0), SAG, (0.5, 0.8), 256, 256)
    np.testing.assert_allclose(pixel_to_patient(g, 10, 4), [5.0, -92.0, 48.0])
    x, y, d = patient_to_pixel(g, np.array([2.0, -92.0, 48.0]))
    assert (x, y) == pytest.approx((10.0, 4.0))
    assert d == pytest.approx(3.0)  # normal is -x: the point is 3 mm to the patient's right of the plane


def test_roundtrip_oblique():
    a = np.deg2rad(20)
    iop = (1.0, 0.0, 0.0, 0.0, np.cos(a), -np.sin(a))
    g = SliceGeometry((-80.0, -60.0, 10.0), iop, (0.7, 0.7), 300, 320)
    p = pixel_to_patient(g, np.array([3.5, 200.0]), np.array([7.25, 150.0]))
    x, y, d = patient_to_pixel(g, p)
    np.testing.assert_allclose(x, [3.5, 200.0], atol=1e-9)
    np.testing.assert_allclose(y, [7.25, 150.0], atol=1e-9)
    np.testing.assert_allclose(d, 0.0, atol=1e-9)


def test_nearest_slice():
    geoms = [SliceGeometry((0.0, 0.0, z), AX, (1.0, 1.0), 10, 10) for z in (0.0, 4.0, 8.0)]
    i, x, y, dist = nearest_slice(geoms, np.array([2.0, 3.0, 5.1]))
    assert (i, x, y) == (1, pytest.approx(2.0), pytest.approx(3.0))
    assert dist == pytest.approx(1.1)


def test_nearest_slice_prefers_slices_the_point_falls_inside():
    near_but_outside = SliceGeometry((100.0, 100.0, 5.0), AX, (1.0, 1.0), 10, 10)   # plane 0.5 mm away
    inside = SliceGeometry((0.0, 0.0, 3.0), AX, (1.0, 1.0), 10, 10)                 # plane 1.5 mm away
    i, x, y, dist = nearest_slice([near_but_outside, inside], np.array([2.0, 3.0, 4.5]))
    assert (i, x, y, dist) == (1, pytest.approx(2.0), pytest.approx(3.0), pytest.approx(1.5))
