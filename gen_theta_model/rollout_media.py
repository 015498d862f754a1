"""Pictures of a closed-loop comparison: a PNG around chunk switches and an mp4 of the camera.

Input per mode is an ``EpisodeTrace``: the command stream the robot received, the joint
states it reported and (for the video) the camera frames, all on one clock (s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gen_theta_model.closed_loop import JERK_RATE_HZ, chunk_switches, replay
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.trajectory import Trajectory

MODE_COLORS = {"harmonic": "tab:green", "sync": "tab:blue", "naive_async": "tab:red"}


@dataclass
class EpisodeTrace:
    mode: str
    spec: EmbodimentSpec
    initial: np.ndarray  # (dof,) positions when the episode started
    commands: list[tuple[float, Trajectory]]  # (receive time, trajectory)
    joint_times: np.ndarray  # (T,)
    joint_q: np.ndarray  # (T, dof)
    joint_qd: np.ndarray  # (T, dof)
    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (stamp, (H, W, 3) uint8)


def _busiest_joint(trace: EpisodeTrace) -> int:
    """Index of the non-gripper joint the robot moved most (peak-to-peak)."""
    span = np.ptp(trace.joint_q, axis=0) if len(trace.joint_q) else np.zeros(trace.spec.dof)
    span[trace.spec.gripper_mask] = -1.0
    return int(np.argmax(span))


def switch_figure(traces: Sequence[EpisodeTrace], path: Path, window_s: float = 0.6) -> None:
    """PNG: commanded (JTC replay) and measured position and velocity of the busiest joint
    around a chunk switch, one column per mode; dashed lines mark switches.
    """
    fig = Figure(figsize=(4.2 * len(traces), 5.5))
    axes = fig.subplots(2, len(traces), squeeze=False)
    j = _busiest_joint(traces[0])  # the same joint in every column
    for col, tr in enumerate(traces):
        switches = chunk_switches(tr.commands)
        ax_q, ax_v = axes[0, col], axes[1, col]
        ax_q.set_title(f"{tr.mode}: joint {tr.spec.joint_names[j]}")
        if not tr.commands or not switches:
            ax_q.text(0.5, 0.5, "no chunk switch", ha="center", transform=ax_q.transAxes)
            continue
        centre = switches[min(2, len(switches) - 1)].time  # skip the start from rest
        times, q, qd = replay(tr.spec, tr.initial, tr.commands, JERK_RATE_HZ)
        keep = np.abs(times - centre) <= window_s
        near = np.abs(tr.joint_times - centre) <= window_s
        ax_q.plot(times[keep] - centre, q[keep, j], color=MODE_COLORS.get(tr.mode), label="commanded")
        ax_q.plot(tr.joint_times[near] - centre, tr.joint_q[near, j], "k.", ms=2, label="measured")
        ax_v.plot(times[keep] - centre, qd[keep, j], color=MODE_COLORS.get(tr.mode))
        ax_v.plot(tr.joint_times[near] - centre, tr.joint_qd[near, j], "k.", ms=2)
        for s in switches:
            if abs(s.time - centre) <= window_s:
                for ax in (ax_q, ax_v):
                    ax.axvline(s.time - centre, color="gray", ls="--", lw=0.8)
        ax_q.set_ylabel("position (rad|m)")
        ax_v.set_ylabel("velocity (/s)")
        ax_v.set_xlabel("time from a chunk switch (s)")
        ax_q.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def overlay_video(traces: Sequence[EpisodeTrace], path: Path, fps: float = 15.0, history_s: float = 2.0) -> int:
    """mp4 (H.264): the modes side by side, each camera frame with the commanded trajectory of
    every joint over the last ``history_s`` s drawn over it (canonical units about each joint's
    mean over that span; dots: chunk switches). Returns frames written.
    """
    usable = [t for t in traces if t.frames and t.commands]
    if not usable:
        raise ValueError("no episode has both camera frames and commands to draw")
    replays = [replay(t.spec, t.initial, t.commands, 50.0) for t in usable]
    switches = [chunk_switches(t.commands) for t in usable]
    starts = [t.frames[0][0] for t in usable]
    length = min(t.frames[-1][0] - s for t, s in zip(usable, starts))
    fig = Figure(figsize=(3.2 * len(usable), 3.4), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(usable), squeeze=False)
    panels = []
    for ax, tr in zip(axes[0], usable):
        ax.set_axis_off()
        image = ax.imshow(tr.frames[0][1], extent=(0, 1, 0, 1), aspect="auto")
        inset = ax.inset_axes((0.0, 0.0, 1.0, 0.35))
        inset.set_facecolor((1, 1, 1, 0.35))
        inset.set_xlim(-history_s, 0.0)
        inset.set_xticks([])
        inset.set_yticks([])
        lines = [inset.plot([], [], lw=0.8)[0] for _ in range(tr.spec.dof)]
        marks = inset.plot([], [], "wo", ms=3)[0]
        title = ax.set_title(tr.mode, color=MODE_COLORS.get(tr.mode, "k"))
        panels.append((image, inset, lines, marks, title))
    fig.tight_layout()
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=int(round(fps)))
    width, height = (int(v) // 2 * 2 for v in canvas.get_width_height())
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    count = 0
    for k in range(int(length * fps)):
        t_rel = k / fps
        for tr, start, (times, q, _), sw, (image, inset, lines, marks, title) in zip(
            usable, starts, replays, switches, panels
        ):
            t = start + t_rel
            i = int(np.searchsorted([f[0] for f in tr.frames], t, side="right")) - 1
            image.set_data(tr.frames[max(i, 0)][1])
            keep = (times <= t) & (times >= t - history_s)
            # canonical units, each joint about its mean over the shown span: shape and jumps stand out
            x = tr.spec.normalize(q[keep]) if keep.any() else np.zeros((1, tr.spec.dof))
            x = x - x.mean(axis=0)
            span = max(float(np.abs(x).max()), 0.01) * 1.15
            inset.set_ylim(-span, span)
            for j, line in enumerate(lines):
                line.set_data(times[keep] - t, x[:, j] if keep.any() else [])
            recent = [s.time - t for s in sw if t - history_s <= s.time <= t]
            marks.set_data(recent, [-0.9 * span] * len(recent))
            title.set_text(f"{tr.mode}  t={t_rel:4.1f} s")
        canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[:height, :width, :3]
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            container.mux(packet)
        count += 1
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return count
