"""Camera decode cost per frame: raw sensor_msgs/Image against CompressedImage (JPEG, PNG), in one run.

The frames are the arm6 scene camera rendered by the sim (gen_theta_model/sim) at 96x96
and 640x480. For each size and transport this builds the message the sim publishes
(gen_theta_ros/conversions.py: ``numpy_to_image`` rgb8, ``numpy_to_compressed`` jpeg
quality 90 or png) and times ``to_rgb8``, the one decoder of the policy server and of
ingest (Pillow for JPEG/PNG), per frame: median and 90th percentile over ``--repeats``
frames, with the message size and the encode cost on the publishing side. Run:
``.venv/bin/python bench/camera_decode.py [--repeats 200]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import numpy as np

SIZES = ((96, 96), (640, 480))
TRANSPORTS = ("raw", "jpeg", "png")


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, 90th percentile) of ``fn``'s wall time over ``repeats`` calls, in ms."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 90))


def render_frames() -> dict[tuple[int, int], np.ndarray]:
    """Render the arm6 scene camera at each of ``SIZES`` (width, height), a pick_place_bin scene: (H, W, 3) uint8."""
    from gen_theta_model.embodiment import load_robot
    from gen_theta_model.sim.camera import render
    from gen_theta_model.sim.robot import SimRobot

    spec = load_robot("arm6")
    sim = SimRobot(spec)
    try:
        sim.reset("pick_place_bin", 0, 0.0)
        scene = next(c for c in spec.cameras if c.name == "scene")
        return {(w, h): render(sim.world, dataclasses.replace(scene, width=w, height=h)) for w, h in SIZES}
    finally:
        sim.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="frames timed per size and transport")
    args = parser.parse_args(argv)
    from gen_theta_ros.conversions import numpy_to_compressed, numpy_to_image, to_rgb8

    encoders = {
        "raw": lambda rgb: numpy_to_image(rgb, "rgb8"),
        "jpeg": lambda rgb: numpy_to_compressed(rgb, "jpeg"),
        "png": lambda rgb: numpy_to_compressed(rgb, "png"),
    }
    print("| size | transport | bytes/frame | decode ms p50 / p90 | encode ms p50 | max abs error |")
    print("|---|---|---|---|---|---|")
    for (w, h), rgb in render_frames().items():
        repeats = max(args.repeats * 96 * 96 // (w * h), 20)
        for transport in TRANSPORTS:
            msg = encoders[transport](rgb)
            decoded = to_rgb8(msg)
            error = int(np.abs(decoded.astype(int) - rgb.astype(int)).max())
            p50, p90 = timed(lambda m=msg: to_rgb8(m), repeats)
            enc, _ = timed(lambda t=transport, x=rgb: encoders[t](x), max(repeats // 4, 5))
            print(f"| {w}x{h} | {transport} | {len(msg.data):,} | {p50:.3f} / {p90:.3f} | {enc:.3f} | {error} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
