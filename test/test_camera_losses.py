"""Counting camera frames lost in transport from header stamps (gen_theta_model/data/camera_losses.py)."""

import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image

from gen_theta_model.data.camera_losses import NAMED_LOSSES, CameraWatch, StampGaps, cdr_header_stamp


@pytest.mark.parametrize("cls", [Image, CompressedImage])
def test_the_stamp_is_read_from_the_serialized_message(cls):
    msg = cls()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_796_000_123, 456_789_000
    msg.header.frame_id = "camera"
    assert cdr_header_stamp(serialize_message(msg)) == pytest.approx(1_796_000_123.456789, abs=1e-6)
    with pytest.raises(ValueError, match="holds no header stamp"):
        cdr_header_stamp(b"\x00\x01\x00\x00")


def test_gaps_count_and_name_the_lost_frames():
    gaps = StampGaps(fps=30.0)
    sent = [100.0 + i / 30.0 for i in range(90)]
    lost = {10, 11, 12, 50, 89}  # the last one is never seen: no later frame shows its gap
    for i, stamp in enumerate(sent):
        if i not in lost:
            gaps.add(stamp + 0.002 * (-1) ** i, received=stamp + 0.01)  # stamps with 2 ms of jitter
    assert (gaps.received, gaps.lost, gaps.out_of_order) == (85, 4, 0)
    assert gaps.lost_stamps == pytest.approx([sent[10], sent[11], sent[12], sent[50]], abs=0.003)
    gaps.add(sent[40], received=sent[-1] + 0.02)  # a stamp from the past
    assert gaps.out_of_order == 1 and gaps.lost == 4
    assert gaps.report() == {"fps": 30.0, "received": 86, "lost": 4, "out_of_order": 1,
                             "lost_stamps": gaps.lost_stamps}


def test_only_the_first_losses_are_named():
    gaps = StampGaps(fps=10.0)
    gaps.add(0.0, 0.0)
    gaps.add(10.0, 10.0)  # 99 frames lost
    assert gaps.lost == 99 and len(gaps.lost_stamps) == NAMED_LOSSES and gaps.lost_stamps[0] == pytest.approx(0.1)


def test_arrival_rate_far_below_fps_is_low():
    gaps = StampGaps(fps=30.0)
    assert not gaps.low_rate(0.0)  # nothing has come yet: no rate to judge
    for i in range(60):  # 2 s at 30 fps
        gaps.add(i / 30.0, i / 30.0)
    assert gaps.arrival_fps(59 / 30.0) == pytest.approx(30.0) and not gaps.low_rate(59 / 30.0)
    for i in range(60, 120, 5):  # then one frame in five: 6 fps
        gaps.add(i / 30.0, i / 30.0)
    now = 119 / 30.0
    assert gaps.arrival_fps(now) == pytest.approx(6.0, abs=0.6) and gaps.low_rate(now)
    assert gaps.lost == 11 * 4  # 60, 65, ..., 115: four lost in each of 11 gaps


def test_camera_watch_warns_once_per_slow_spell_and_counts_from_reset():
    watch = CameraWatch({"a": 10.0, "b": 10.0})
    for i in range(30):  # 3 s: camera a at its 10 fps, b at 2 fps (1 frame in 5 comes)
        watch.gaps["a"].add(i / 10, i / 10)
        if i % 5 == 0:
            watch.gaps["b"].add(i / 10, i / 10)
    assert watch.newly_slow(2.95) == ["b"] and watch.newly_slow(2.95) == []  # said once
    assert watch.values("b", 2.95) == {"fps": "10", "arrival_fps": "2.0", "received": "6", "lost": "20",
                                       "out_of_order": "0"}
    watch.reset()
    assert watch.gaps["b"].lost == 0 and watch.slow == {"b"}  # the counts restart, the slow spell goes on
    for i in range(30, 60):
        watch.gaps["b"].add(i / 10, i / 10)
    assert watch.newly_slow(5.95) == [] and watch.slow == set()  # recovered: a later slow spell warns again
