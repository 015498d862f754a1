"""Object positions from a recorded geometry_msgs/PoseArray stream (the sim's sim/object_poses).

A simulator knows where every task object is; a real cell may too (motion capture, fiducials).
Where an episode has such a stream, ingest keeps the positions beside the joints, and training
may ask the image encoder to place the objects (PolicyConfig.object_weight). The policy never
reads them: they are a training target, not an input.

Streams (episodes/<id>/streams.safetensors)::

    objects.stamp_ns   (N,) int64       header stamps, increasing
    objects.position   (N, M, 3) float  positions in the message's frame (the sim's world), m;
                                        M objects in a fixed order for the whole episode
"""

from __future__ import annotations

import numpy as np

from gen_theta_model.data.checks import sensed_before_start

OBJECT_STAMP = "objects.stamp_ns"
OBJECT_POSITION = "objects.position"


def pose_array_positions(msg) -> np.ndarray:
    """(M, 3) float64 positions (m) of a geometry_msgs/PoseArray, in its order."""
    return np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses], dtype=np.float64).reshape(-1, 3)


def object_streams(stamps_ns: list[int], recv_ns: list[int], positions: list[np.ndarray],
                   start_ns: int) -> dict[str, np.ndarray]:
    """Return the episode's object streams (module docstring), or {} when none were recorded.

    Messages sensed before the recording's start (the scene before a reset) are dropped, as for
    joint_states. Raises ValueError when the stamps do not increase (as for joint_states), the
    number of objects changes within the episode or a position is not finite.
    """
    n = sensed_before_start(np.asarray(stamps_ns, np.int64), np.asarray(recv_ns, np.int64), start_ns)
    stamps, positions = stamps_ns[n:], positions[n:]
    if not stamps:
        return {}
    counts = sorted({len(p) for p in positions})
    if len(counts) > 1:
        raise ValueError(f"the object poses change in number within the episode ({counts}); their order is their "
                         "identity, so it must stay fixed")
    pos = np.stack(positions)
    if not np.isfinite(pos).all():
        raise ValueError("an object position is not finite")
    t = np.asarray(stamps, np.int64)
    back = np.flatnonzero(np.diff(t) <= 0)
    if len(back):
        i = int(back[0]) + 1
        raise ValueError(f"object pose stamp {t[i]} ns does not increase (previous {t[i - 1]})")
    return {OBJECT_STAMP: t, OBJECT_POSITION: pos}


def objects_at(stamps_ns: np.ndarray, positions: np.ndarray, t_ns: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (slots, 3) float32 of the latest poses at or before ``t_ns`` (the first after it
    when none is earlier), zero-padded, and the mask (slots,) bool of present objects.

    Raises ValueError when the episode has more objects than ``slots``.
    """
    out, mask = np.zeros((slots, 3), np.float32), np.zeros(slots, bool)
    if not len(stamps_ns):
        return out, mask
    m = positions.shape[1]
    if m > slots:
        raise ValueError(f"{m} objects exceed the {slots} object slots of a sample (batch.MAX_OBJECTS)")
    i = max(int(np.searchsorted(stamps_ns, t_ns, side="right")) - 1, 0)
    out[:m], mask[:m] = positions[i], True
    return out, mask
