"""Where the policy plans to grasp or release, offline: its chunk against the demonstration's.

`python -m gen_theta_model.sim.grasp_error CHECKPOINT --data DIR --robot arm6 --task stack [--event release]`

For each recorded episode of the robot and task, the grasp is the first control step at which the
demonstration commands the task gripper closed (below half its range, after being open), the release
the first step after the grasp that commands it open again (``--event release``: the place, scored
the same way). At each lead L before the event (default 0.2, 0.5 and 0.8 s: the event lies inside
the 1 s chunk), the sample that the loader builds at that step (delay 0, no augmentation, no added
staleness: what validation sees) goes to the policy, which decodes its chunk as the server does
(each joint's heaviest component). The chunk's row at the event step is put through forward
kinematics and compared with the demonstration's: how far, in cm, the tool would be from where the
expert closed (opened), and whether the chunk's gripper closes (opens) within 0.1 s of the expert's,
and the weight of the mixture's gripper plans that close (open) within the chunk (a policy that
knows the grasp is coming raises it as the lead shrinks). A lead beyond the chunk (1 s) compares the
chunk's last row with the demonstration at that step, and the gripper should not change yet. The
"spread" is the same error for a policy that always acts at the demonstrations' mean point: a policy
that does not locate the object scores about the spread; a grasp needs about 2 cm (a 4 cm cube in an
8 cm opening). "Follows" fits the planned tool position on the demonstrated one along each world
axis over the samples of a lead (slope 1: the plan moves with the object; 0: one point for every
episode), on the axes along which the demonstrations' points spread by more than 5 mm. Episodes of
the checkpoint's training split and of its validation split are reported apart, so underfitting
(train ~ val, both large) is told from overfitting (train small, val large). This links the offline
metrics to closed-loop success (docs/policy.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from gen_theta_model import batch as K
from gen_theta_model.cli_args import ExtendAction
from gen_theta_model.data.dataset import EpisodeDataset
from gen_theta_model.data.episode import ACTION_POSITION
from gen_theta_model.data.loader import collate
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.sim.grasp_trace import AxisFit, axis_fits, closed_rows, gripper_plans
from gen_theta_model.sim.kinematics import ArmKinematics

CLOSE_WINDOW_S = 0.1  # the chunk's gripper acts "on time" within this of the demonstration's close (open)
EVENTS = ("grasp", "release")

# a batch of samples (gen_theta_model.batch, DELAY 0) -> the chunk the policy would execute, (B, H, D) canonical,
# and, for a mixture policy, the weight (B,) of its task-gripper plans that act (close; open for a release)
# within the chunk (None for a policy without one)
Predictor = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class GraspQuery:
    """One sample: ``lead_steps`` control steps before the demonstration's event (grasp or release) of ``episode``."""

    episode: int  # index into the dataset's episodes
    step: int  # the sample's action step
    lead_steps: int  # event step - step
    split: str  # "train" or "val"


@dataclass(frozen=True)
class GraspErrorRow:
    """Errors of one (split, lead): tool distances in cm."""

    split: str
    lead_s: float
    samples: int
    xy_cm_median: float  # tool xy at the event step, plan against demonstration
    xy_cm_p90: float
    height_cm_median: float  # |tool height difference| at the event step
    on_time: float  # share of chunks whose gripper closes (opens) within CLOSE_WINDOW_S of the demonstration's
    # (a chunk that ends before the event: does not change)
    spread_cm_median: float  # the same xy error for "always the mean point" on these episodes
    follows: dict[str, AxisFit]  # planned tool position on the demonstrated one, per world axis ("x", "y")
    act_weight: float | None = None  # mean weight of the gripper plans that close (open) within the chunk


def event_step(actions: np.ndarray, spec: EmbodimentSpec, gripper: int, event: str = "grasp") -> int | None:
    """Row of ``actions`` (N, dof), joint units, of the ``event``; None if there is none. The grasp:
    the first row that commands ``gripper`` closed after an open row; the release: the first row
    after the grasp that commands it open.
    """
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
    closed = closed_rows(actions, spec, gripper)
    opened = np.flatnonzero(~closed)
    after = np.flatnonzero(closed[opened[0]:]) if len(opened) else []
    if not len(after):
        return None
    grasp = int(opened[0] + after[0])
    if event == "grasp":
        return grasp
    reopened = np.flatnonzero(~closed[grasp:])
    return grasp + int(reopened[0]) if len(reopened) else None


def queries(dataset: EpisodeDataset, episodes: dict[str, Sequence[int]], spec: EmbodimentSpec, gripper: int,
            leads_s: Sequence[float], event: str = "grasp") -> tuple[list[GraspQuery], dict[int, int]]:
    """Return the samples to score (``episodes``: split name -> episode indices) and each episode's event step."""
    bounds = dataset.episodes.steps()  # (n, 2): first step, end step
    out, events = [], {}
    for split, eps in episodes.items():
        for ep in eps:
            g = event_step(dataset.arrays(ep)[ACTION_POSITION], spec, gripper, event)
            if g is None:
                continue
            events[ep] = g
            for lead in leads_s:
                k = int(round(lead * spec.control_rate_hz))
                if bounds[ep, 0] <= g - k < bounds[ep, 1]:
                    out.append(GraspQuery(ep, g - k, k, split))
    return out, events


def score(dataset: EpisodeDataset, predict: Predictor, spec: EmbodimentSpec, kin: ArmKinematics,
          qs: Sequence[GraspQuery], events: dict[int, int], batch_size: int = 32,
          event: str = "grasp") -> list[GraspErrorRow]:
    """Rows per (split, lead) for the queries ``qs`` of one embodiment ``spec``; ``events``: each
    episode's ``event`` step (``queries``).
    """
    g, rate = kin.gripper, spec.control_rate_hz
    window = int(round(CLOSE_WINDOW_S * rate))
    tool = {ep: kin.fk(dataset.arrays(ep)[ACTION_POSITION][s])[0] for ep, s in events.items()}  # (3,) m
    mean_xy = np.mean([t[:2] for t in tool.values()], axis=0) if tool else np.zeros(2)
    spread = {ep: float(np.linalg.norm(t[:2] - mean_xy)) for ep, t in tool.items()}
    xy, height, on_time = np.zeros(len(qs)), np.zeros(len(qs)), np.zeros(len(qs), bool)
    planned_xy, shown_xy = np.zeros((len(qs), 2)), np.zeros((len(qs), 2))
    act_weight: np.ndarray | None = np.zeros(len(qs))
    for start in range(0, len(qs), batch_size):
        part = qs[start:start + batch_size]
        batch = collate([dataset.sample(q.episode, q.step, seed=0) for q in part])
        batch[K.DELAY] = torch.zeros_like(batch[K.DELAY])
        chunk, weight = predict(batch)
        chunk = chunk[..., : spec.dof].double().numpy()  # (B, H, dof) canonical
        if weight is None or act_weight is None:
            act_weight = None
        else:
            act_weight[start:start + len(part)] = weight.double().numpy()
        for i, q in enumerate(part):
            row = min(q.lead_steps, chunk.shape[1] - 1)  # the event, or the chunk's end before it
            q_plan = spec.denormalize(chunk[i])  # (H, dof) rad|m
            planned = kin.fk(q_plan[row])[0]
            shown = kin.fk(dataset.arrays(q.episode)[ACTION_POSITION][q.step + row])[0]
            planned_xy[start + i], shown_xy[start + i] = planned[:2], shown[:2]
            xy[start + i] = np.linalg.norm(planned[:2] - shown[:2])
            height[start + i] = abs(planned[2] - shown[2])
            closed = closed_rows(q_plan, spec, g)
            plan = np.flatnonzero(closed if event == "grasp" else ~closed)  # rows it plans after the event
            if q.lead_steps < chunk.shape[1]:  # the event is inside the chunk: act then
                on_time[start + i] = len(plan) > 0 and abs(int(plan[0]) - q.lead_steps) <= window
            else:  # it lies beyond: no change yet
                on_time[start + i] = len(plan) == 0
    rows = []
    for split in dict.fromkeys(q.split for q in qs):
        for lead in sorted({q.lead_steps for q in qs}):
            sel = np.array([q.split == split and q.lead_steps == lead for q in qs])
            if not sel.any():  # every episode of this split acts sooner than this lead
                continue
            eps = sorted({q.episode for q, s in zip(qs, sel, strict=True) if s})
            rows.append(GraspErrorRow(split, lead / rate, int(sel.sum()), 100 * float(np.median(xy[sel])),
                                      100 * float(np.percentile(xy[sel], 90)), 100 * float(np.median(height[sel])),
                                      float(on_time[sel].mean()), 100 * float(np.median([spread[e] for e in eps])),
                                      axis_fits(shown_xy[sel], planned_xy[sel]),
                                      None if act_weight is None else float(act_weight[sel].mean())))
    return rows


def table(rows: Sequence[GraspErrorRow], event: str = "grasp") -> str:
    """Markdown table of ``rows`` (of the ``event``)."""
    acts = "closes" if event == "grasp" else "opens"
    lines = ["| episodes | lead s | samples | tool xy error cm, median / p90 | height error cm | "
             f"gripper as shown ({acts} within 0.1 s) | weight of plans that {acts[:-1]} | "
             f"spread cm (mean {event} point) | follows: slope (r) per axis |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        follows = ", ".join(f"{axis} {f.slope:.2f} ({f.r:.2f})" for axis, f in r.follows.items()) or "-"
        lines.append(f"| {r.split} | {r.lead_s:.1f} | {r.samples} | {r.xy_cm_median:.1f} / {r.xy_cm_p90:.1f} | "
                     f"{r.height_cm_median:.1f} | {r.on_time:.2f} | "
                     f"{'-' if r.act_weight is None else f'{r.act_weight:.2f}'} | {r.spread_cm_median:.1f} | "
                     f"{follows} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    from gen_theta_model.checkpoint import load_policy, read_checkpoint_config
    from gen_theta_model.data.loader import make_dataloaders

    parser = argparse.ArgumentParser(prog="python -m gen_theta_model.sim.grasp_error",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="checkpoint directory")
    parser.add_argument("--data", nargs="+", action=ExtendAction, required=True,
                        help="dataset directories (as trained on)")
    parser.add_argument("--robot", default="arm6")
    parser.add_argument("--task", default="stack")
    parser.add_argument("--event", choices=EVENTS, default="grasp", help="what to score the plans at")
    parser.add_argument("--leads", type=float, nargs="+", action=ExtendAction, default=[0.2, 0.5, 0.8],
                        help="s before the event")
    parser.add_argument("--episodes", type=int, default=40, help="at most this many episodes per split")
    a = parser.parse_args(argv)
    torch.set_num_threads(1)
    policy = load_policy(a.checkpoint)
    train_cfg, _, _ = read_checkpoint_config(a.checkpoint)
    data_cfg = replace(train_cfg.data, num_workers=0, observation=policy.observation_config)
    _, val, info = make_dataloaders(a.data, data_cfg)  # the checkpoint's own split
    dataset = val.dataset  # no augmentation, no added staleness
    if a.robot not in info.embodiment_names:
        parser.error(f"{a.data}: no {a.robot} episodes (has {info.embodiment_names})")
    e = info.embodiment_names.index(a.robot)
    tasks, embodiment = info.index.column("task"), info.index.embodiment_index
    pick = {name: [ep for ep in eps if tasks[ep] == a.task and embodiment[ep] == e][: a.episodes]
            for name, eps in (("train", info.train_episodes), ("val", info.val_episodes))}
    spec = info.specs[a.robot]
    target = int(policy.embodiment_map([spec])[0])

    def predict(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        obs = {k: batch[k] for k in K.OBSERVATION_KEYS}
        obs[K.EMBODIMENT_INDEX] = torch.full_like(batch[K.EMBODIMENT_INDEX], target)
        empty = torch.zeros(len(batch[K.DELAY]), 0, batch[K.JOINT_MASK].shape[1])
        chunk, dist = policy.infer(obs, empty, 0, decode="top")
        weights, closed = gripper_plans(dist, kin.gripper)  # (B, K), (B, K, H)
        acts = closed.any(-1) if a.event == "grasp" else (~closed).any(-1)  # (B, K)
        return chunk, (weights * acts).sum(-1)

    kin = ArmKinematics(spec)
    try:
        qs, events = queries(dataset, pick, spec, kin.gripper, a.leads, a.event)
        if not qs:
            parser.error(f"no {a.robot} {a.task} episode in {a.data} has a {a.event} at these leads")
        print(table(score(dataset, predict, spec, kin, qs, events, event=a.event), a.event))
    finally:
        kin.close()


if __name__ == "__main__":
    main()
