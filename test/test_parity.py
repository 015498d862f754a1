"""Train/serve parity: one recorded episode seen by the loader (bag -> ingest -> dataset sample)
and by the policy server (the same messages -> HarmonicServer inputs -> observation) gives
the model the same input: joint history and its ages, camera frames and their ages, joint
descriptors, masks and the instruction. Only the video codec stands between the pixels.
"""

import numpy as np
import pytest
from bag_helpers import write_bag

from gen_theta_model import batch as K
from gen_theta_model.data.bag import open_bag
from gen_theta_model.data.episode import ACTION_STAMP
from gen_theta_model.data.ingest import main as ingest
from gen_theta_model.data.loader import DataConfig, make_dataloaders
from gen_theta_model.embodiment import load_robot
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_norm_stats
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.serving import HarmonicServer, ServerConfig
from gen_theta_model.topics import load_topics

OBS = ObservationConfig(image_size=32, max_cameras=2, history=4, max_dof=8, instruction_len=32)


def stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def served_observation(bag, spec, chunk_start: float) -> dict[str, np.ndarray]:
    """Hand every message sensed up to ``chunk_start`` (s) to a server, as its callbacks would."""
    policy = build_policy(preset("tiny", max_dof=8), [spec], {spec.name: example_norm_stats(spec)})
    server = HarmonicServer(policy, [(spec.name, spec)], ServerConfig(), obs_cfg=OBS)
    topics = load_topics()
    cameras = {topics.camera_topic(spec.name, c.name): c.name for c in spec.cameras}
    for m in open_bag(bag).messages():
        if m.msgtype == "std_msgs/msg/String":
            server.on_instruction(spec.name, m.msg.data)
        elif stamp_s(m.msg) > chunk_start + 1e-9:
            continue
        elif m.msgtype == "sensor_msgs/msg/JointState":
            server.on_joint_state(spec.name, list(m.msg.name), np.asarray(m.msg.position), stamp_s(m.msg),
                                  stamp_s(m.msg))
        elif m.topic in cameras:
            frame = np.frombuffer(bytes(m.msg.data), np.uint8).reshape(m.msg.height, m.msg.width, 3)
            server.on_image(spec.name, cameras[m.topic], frame, stamp_s(m.msg), stamp_s(m.msg))
    return server.session(spec.name).inputs.observation(chunk_start, OBS)


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_loader_and_server_give_the_model_the_same_observation(tmp_path, where):
    spec = load_robot("arm6")
    bag = write_bag(tmp_path / "bag", spec, duration=1.6)
    assert ingest([str(bag), "--out", str(tmp_path / "ds")]) == 0
    train, _, info = make_dataloaders(tmp_path / "ds", DataConfig(batch_size=1, num_workers=0, val_fraction=0.0,
                                                                  horizon=20, observation=OBS))
    ds = train.dataset
    ref = ds.episodes[0]
    step = ref.first_step + int(where * (ref.num_steps - 1 - ref.first_step))
    sample = ds[(0, step, 0)]
    t = int(ds.arrays(0)[ACTION_STAMP][step]) * 1e-9
    served = served_observation(bag, spec, t)
    for key in K.OBSERVATION_KEYS:
        if key == K.IMAGES:
            continue
        np.testing.assert_allclose(served[key], sample[key], atol=2e-6, rtol=0, err_msg=key)
    assert sample[K.STATE_MASK].sum() >= 2 and sample[K.IMAGE_MASK][: len(spec.cameras)].all()  # not all padding
    # Pixels: the dataset's frames went through the video codec (flat test frames: within 2 levels).
    diff = np.abs(served[K.IMAGES].astype(int) - sample[K.IMAGES].astype(int))
    assert diff.max() <= 2, f"codec error {diff.max()} levels"
