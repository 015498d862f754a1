"""Camera frames lost on the way: gaps in header stamps against the camera's declared rate.

A camera driver stamps each frame when it captures it, at ``fps`` frames per second.
sensor_msgs/Image has no sequence number in ROS 2, so the stamps of the frames that
arrive are what tells which did not: consecutive stamps ``g`` periods apart mean
``round(g) - 1`` frames lost between them (DDS dropped them: a shared-memory segment too
small for the images, a reliable history overrun, a full recorder queue counts apart, as
``drops``). A rate far below ``fps`` in the last seconds is worth a warning by itself:
the driver may publish slower than declared, or most frames may be lost in transport.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

NAMED_LOSSES = 20  # stamps of the first lost frames, named in a report
LOW_RATE_FRACTION = 0.5  # warn when frames arrive at less than this share of fps
RATE_WINDOW_S = 2.0  # the arrival rate is measured over this many seconds


def cdr_header_stamp(data: bytes) -> float:
    """Return the ``header.stamp`` (s) of a serialized (CDR) message whose first field is a
    std_msgs/Header (sensor_msgs/Image, CompressedImage, JointState, ...), without deserializing it.

    CDR: a 4-byte encapsulation header (byte 1: 1 little-endian, 0 big-endian), then the
    stamp's int32 sec and uint32 nanosec. ValueError for a message too short to hold one.
    """
    if len(data) < 12:
        raise ValueError(f"a serialized message of {len(data)} bytes holds no header stamp")
    sec, nanosec = struct.unpack_from("<iI" if data[1] & 1 else ">iI", data, 4)
    return sec + nanosec * 1e-9


@dataclass
class StampGaps:
    """Frames of one camera topic at ``fps``: received, lost (stamp gaps), out of order, arrival rate."""

    fps: float
    received: int = 0
    lost: int = 0
    out_of_order: int = 0  # stamps not after the previous one (a restarted driver, a bad clock)
    lost_stamps: list[float] = field(default_factory=list)  # expected stamps (s) of the first lost frames
    last_stamp: float | None = None
    arrivals: deque[float] = field(default_factory=deque)  # receive times (s) within RATE_WINDOW_S

    def add(self, stamp: float, received: float) -> None:
        """Count a frame stamped ``stamp`` s, received at ``received`` s (any clock, for the rate)."""
        self.received += 1
        self.arrivals.append(received)
        while self.arrivals and self.arrivals[0] < received - RATE_WINDOW_S:
            self.arrivals.popleft()
        if self.last_stamp is not None:
            if stamp <= self.last_stamp:
                self.out_of_order += 1
                return
            missing = max(0, round((stamp - self.last_stamp) * self.fps) - 1)
            self.lost += missing
            room = NAMED_LOSSES - len(self.lost_stamps)
            self.lost_stamps += [round(self.last_stamp + (i + 1) / self.fps, 6) for i in range(min(missing, room))]
        self.last_stamp = stamp

    def arrival_fps(self, now: float) -> float:
        """Return the frames received per second over the last RATE_WINDOW_S before ``now``."""
        return sum(1 for t in self.arrivals if t >= now - RATE_WINDOW_S) / RATE_WINDOW_S

    def low_rate(self, now: float) -> bool:
        """Tell whether frames have come (ever) but now arrive at under LOW_RATE_FRACTION of fps."""
        return self.received > 0 and self.arrival_fps(now) < LOW_RATE_FRACTION * self.fps

    def report(self) -> dict[str, object]:
        """Return the counts as plain types (episode.yaml, the recorder's stop reply)."""
        return {"fps": self.fps, "received": self.received, "lost": self.lost, "out_of_order": self.out_of_order,
                "lost_stamps": list(self.lost_stamps)}


def low_rate_warning(name: str, gaps: StampGaps, now: float) -> str:
    """Return the warning for camera ``name`` whose frames arrive at under LOW_RATE_FRACTION of its fps."""
    return (f"{name}: frames arrive at {gaps.arrival_fps(now):.1f}/s of {gaps.fps:g} fps declared: the driver "
            "publishes slower, or frames are lost in transport (give its process FASTDDS_DEFAULT_PROFILES_FILE="
            "config/fastdds.xml, or use compressed images: docs/dataset_format.md)")


@dataclass
class CameraWatch:
    """``StampGaps`` of several cameras (any keys: topics, "robot/camera"), at ``fps`` per key, and
    which of them arrive slowly: what the recorder and the policy server report on /diagnostics.
    """

    fps: dict[str, float]
    gaps: dict[str, StampGaps] = field(init=False)
    slow: set[str] = field(default_factory=set)  # cameras arriving at under LOW_RATE_FRACTION of fps

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Count from now on (``slow`` is kept: it is about the rate, not the counts)."""
        self.gaps = {key: StampGaps(fps) for key, fps in self.fps.items()}

    def newly_slow(self, now: float) -> list[str]:
        """Update ``slow`` at ``now``; return the cameras that are slow now and were not at the last
        call (warn once each, until their rate recovers).
        """
        slow = {key for key, gaps in self.gaps.items() if gaps.low_rate(now)}
        new = sorted(slow - self.slow)
        self.slow = slow
        return new

    def values(self, key: str, now: float) -> dict[str, str]:
        """Diagnostic values of camera ``key``: declared and arrival fps, frames received, lost, out of order."""
        gaps = self.gaps[key]
        return {"fps": f"{gaps.fps:g}", "arrival_fps": f"{gaps.arrival_fps(now):.1f}", "received": str(gaps.received),
                "lost": str(gaps.lost), "out_of_order": str(gaps.out_of_order)}
