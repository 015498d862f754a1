"""gen_theta_model.messages without ROS: ``to_rgb8`` for every encoding, on plain field objects.

The messages here are SimpleNamespaces with the ROS fields, as a bag reader gives them;
the expected frames are written out by hand from the rule in the module docstring.
"""

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gen_theta_model.messages import ENCODINGS, ConversionError, joint_state_to_arrays, to_rgb8

ROOT = Path(__file__).resolve().parent.parent


def image(array: np.ndarray, encoding: str, big: bool = False) -> SimpleNamespace:
    """Build an Image with ``array`` (H, W[, C]) as its pixels, no row padding."""
    arr = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder(">" if big else "<"))
    h, w = arr.shape[:2]
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(big),
                           step=arr.nbytes // h, data=arr.tobytes())


RGB = np.array([[[10, 20, 30], [40, 50, 60]]], dtype=np.uint8)  # (1, 2, 3)
ALPHA = np.full((1, 2, 1), 99, dtype=np.uint8)
GREY = np.array([[0, 200]], dtype=np.uint8)  # (1, 2)
GREY_RGB = np.repeat(GREY[:, :, None], 3, axis=2)


@pytest.mark.parametrize(
    "encoding, pixels, expected",
    [
        ("rgb8", RGB, RGB),
        ("8UC3", RGB, RGB),
        ("bgr8", RGB[:, :, ::-1], RGB),
        ("rgba8", np.concatenate([RGB, ALPHA], axis=2), RGB),
        ("bgra8", np.concatenate([RGB[:, :, ::-1], ALPHA], axis=2), RGB),
        ("rgb16", RGB.astype(np.uint16) * 256 + 255, RGB),
        ("bgr16", RGB[:, :, ::-1].astype(np.uint16) * 256, RGB),
        ("rgba16", np.concatenate([RGB, ALPHA], axis=2).astype(np.uint16) * 256, RGB),
        ("bgra16", np.concatenate([RGB[:, :, ::-1], ALPHA], axis=2).astype(np.uint16) * 256 + 7, RGB),
        ("mono8", GREY, GREY_RGB),
        ("8UC1", GREY, GREY_RGB),
        ("mono16", GREY.astype(np.uint16) * 256 + 128, GREY_RGB),
        ("16UC1", GREY.astype(np.uint16) * 256, GREY_RGB),
        ("32FC1", np.array([[0.0, 200 / 255]], dtype=np.float32), GREY_RGB),
    ],
)
@pytest.mark.parametrize("big", [False, True])
def test_to_rgb8_every_encoding(encoding, pixels, expected, big):
    out = to_rgb8(image(pixels, encoding, big))
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_every_known_encoding_is_covered_above():
    covered = {"rgb8", "8UC3", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16", "mono8", "8UC1",
               "mono16", "16UC1", "32FC1"}
    assert covered == set(ENCODINGS)


def test_32fc1_clips_and_takes_nan_as_black():
    out = to_rgb8(image(np.array([[-1.0, np.nan, 0.5, 7.0]], dtype=np.float32), "32FC1"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 128, 255])


def test_compressed_image_is_rgb8():
    from io import BytesIO

    from PIL import Image as PILImage

    buf = BytesIO()
    PILImage.fromarray(GREY, "L").save(buf, format="PNG")
    out = to_rgb8(SimpleNamespace(format="png", data=buf.getvalue()))
    np.testing.assert_array_equal(out, GREY_RGB)


@pytest.mark.parametrize(
    "msg, match",
    [
        (SimpleNamespace(height=1, width=1, encoding="yuv422", is_bigendian=0, step=2, data=bytes(2)), "yuv422"),
        (SimpleNamespace(height=1, width=2, encoding="rgb8", is_bigendian=0, step=6, data=bytes(5)), "too small"),
        (SimpleNamespace(height=0, width=0, encoding="rgb8", is_bigendian=0, step=0, data=b""), "empty"),
        (SimpleNamespace(format="jpeg", data=b"not an image"), "cannot be decoded"),
    ],
)
def test_undecodable_images_are_a_conversion_error(msg, match):
    with pytest.raises(ConversionError, match=match):
        to_rgb8(msg)


def test_joint_state_fields():
    names, q, qd, eff = joint_state_to_arrays(SimpleNamespace(name=["a"], position=[0.5], velocity=[], effort=[]))
    assert names == ["a"] and q.tolist() == [0.5] and np.isnan(qd).all() and np.isnan(eff).all()


def test_the_core_imports_no_ros():
    """gen_theta_model imports neither rclpy, ROS message packages nor gen_theta_ros."""
    ros = {"rclpy", "gen_theta_ros", "sensor_msgs", "std_msgs", "trajectory_msgs", "builtin_interfaces"}
    bad = []
    for path in sorted((ROOT / "gen_theta_model").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ros]
    assert not bad, bad
