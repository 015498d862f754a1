"""The learning-loop steps of `gen-theta demo` (gen_theta_ros/demo.py runs them in order).

collect -> ingest -> train -> serve and roll out, each through the same command a user
would type, into ``<out>/``: episodes/ (rosbag2 MCAP), dataset/, run/ (checkpoints),
rollout/ (results.md, results.json, switches.png, rollout.mp4). Then the shipped checkpoint
(models/gen_theta_sim, docs/policy.md) on the same task at 300 ms of added delay, in-process,
into rollout_shipped/; the last table holds both policies' rows, each labelled.

    gen-theta collect --robot R --task T --episodes N --out OUT/episodes
    gen-theta ingest OUT/episodes --out OUT/dataset
    gen-theta train config/train/tiny_pretrain.yaml --set dataset=[OUT/dataset] --set out_dir=OUT/run ...
    gen-theta rollout OUT/run --robot R --task T ...   (brings up sim_robot + policy_server)
    gen-theta rollout models/gen_theta_sim --in-process --inference-ms 35 --delays-ms 300 ...
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gen_theta_model.closed_loop import markdown_table
from gen_theta_model.config import share_dir

if TYPE_CHECKING:
    from gen_theta_ros.demo import DemoContext

SHIPPED = Path("models") / "gen_theta_sim"  # under the share directory
SHIPPED_DELAY_MS = 300.0  # the delay at which harmonic execution has to beat both baselines
SHIPPED_INFERENCE_MS = 35.0  # the tiny policy's model latency on this project's CPU, fixed: reproducible

# Committed prefixes up to 20 steps (400 ms at 50 Hz) are trained, so that 300 ms of added
# delay plus the tiny model's own latency still fit the prefix the policy has seen.
DEMO_MAX_DELAY_STEPS = 20


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"demo: {what} failed with status {code}")


def step_collect(ctx: DemoContext) -> None:
    """Record scripted-expert episodes of the learning task through the recorder."""
    from gen_theta_ros.collect import main as collect

    _check(collect(["--robot", ctx.robot, "--task", ctx.learn_task, "--episodes", str(ctx.collect_episodes),
                    "--seed", "100", "--out", str(ctx.out / "episodes"), "--log-dir", str(ctx.log_dir / "collect")]),
           "collect")


def step_ingest(ctx: DemoContext) -> None:
    """Turn the recorded bags into the training dataset."""
    from gen_theta_model.data.ingest import main as ingest

    _check(ingest([str(ctx.out / "episodes"), "--out", str(ctx.out / "dataset")]), "ingest")


def step_train(ctx: DemoContext) -> None:
    """Train the tiny policy with harmonic conditioning on the dataset."""
    from gen_theta_model.train import main as train

    steps = ctx.train_steps
    _check(train([
        str(share_dir() / "config" / "train" / "tiny_pretrain.yaml"),
        "--set", f"dataset=[{ctx.out / 'dataset'}]",
        "--set", f"out_dir={ctx.out / 'run'}",
        "--set", f"max_steps={steps}",
        "--set", f"optim.warmup_steps={max(1, steps // 10)}",
        "--set", f"eval_interval={steps}",
        "--set", f"checkpoint_interval={steps}",
        "--set", f"data.harmonic.max_delay_steps={DEMO_MAX_DELAY_STEPS}",
    ]), "train")


def step_rollout(ctx: DemoContext) -> None:
    """Serve the trained policy on the sim robot: sync, naive async and harmonic at 0/100/300 ms."""
    from gen_theta_ros.rollout import RolloutConfig, run_rollout

    cfg = RolloutConfig(
        checkpoint=str(ctx.out / "run"),
        robots=(ctx.robot,),
        tasks=(ctx.learn_task,),
        seeds=tuple(range(1000, 1000 + ctx.rollout_seeds)),  # not the seeds the expert demonstrated
        max_seconds=ctx.rollout_seconds,
        out=str(ctx.out / "rollout"),
    )
    ctx.rollout_rows = [{**r, "policy": f"trained here ({ctx.train_steps} steps)"} for r in run_rollout(cfg)]
    print(markdown_table(ctx.rollout_rows))
    print(f"results, switches.png and rollout.mp4 in {Path(cfg.out).resolve()}")


def step_shipped(ctx: DemoContext) -> None:
    """Roll out the shipped checkpoint on the learning task at 300 ms: harmonic against both baselines."""
    from gen_theta_ros.rollout import RolloutConfig, run_rollout

    checkpoint = share_dir() / SHIPPED
    cfg = RolloutConfig(
        checkpoint=str(checkpoint),
        robots=(ctx.robot,),
        tasks=(ctx.learn_task,),
        seeds=tuple(range(1000, 1000 + ctx.shipped_seeds)),
        delays_ms=(SHIPPED_DELAY_MS,),
        out=str(ctx.out / "rollout_shipped"),
        video=False,
        in_process=True,
        inference_ms=SHIPPED_INFERENCE_MS,
    )
    shipped = [{**r, "policy": f"shipped {SHIPPED}"} for r in run_rollout(cfg)]
    print(markdown_table(ctx.rollout_rows + shipped))
    print(f"shipped checkpoint's results in {Path(cfg.out).resolve()}")


STEPS = [
    ("collect: expert episodes through the recorder", step_collect),
    ("ingest: bags -> dataset", step_ingest),
    ("train: the tiny harmonic policy", step_train),
    ("serve and roll out: sync / naive async / harmonic at 0, 100, 300 ms", step_rollout),
    (f"the shipped checkpoint {SHIPPED}: sync / naive async / harmonic at 300 ms, in-process", step_shipped),
]
