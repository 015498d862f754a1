"""gen_theta_model.robot_inputs without ROS: partial JointStates merged by name, bad ones refused."""

import numpy as np
import pytest

from gen_theta_model.messages import ConversionError
from gen_theta_model.robot_inputs import JointStateMerger


def test_partial_joint_states_merge_by_name_each_joint_with_its_stamp():
    m = JointStateMerger(["a", "b", "grip"])
    assert m.update(["b", "a", "wheel"], np.array([2.0, 1.0, 9.0]), stamp=10.0, now=10.5) == 2  # wheel ignored
    assert m.state() is None and m.missing() == ["grip"] and m.oldest_received() is None
    assert m.update(["grip"], np.array([0.03]), stamp=10.2, now=10.6) == 1
    stamp, q = m.state()
    assert stamp == 10.0 and q.tolist() == [1.0, 2.0, 0.03]  # stamped as its oldest joint
    assert m.oldest_received() == 10.5
    assert m.update(["other"], np.array([1.0]), stamp=11.0, now=11.0) == 0  # nothing of this robot


def test_a_non_finite_position_refuses_the_whole_message():
    m = JointStateMerger(["a", "b"])
    m.update(["a", "b"], np.array([1.0, 2.0]), 1.0, 1.0)
    with pytest.raises(ConversionError, match=r"non-finite position of joint\(s\) \['b'\]"):
        m.update(["a", "b"], np.array([5.0, np.nan]), 2.0, 2.0)
    assert m.state() == (1.0, pytest.approx(np.array([1.0, 2.0])))  # 'a' was not taken either
    m.update(["a", "b", "x"], np.array([1.0, 2.0, np.inf]), 3.0, 3.0)  # an unknown joint may be anything
    with pytest.raises(ConversionError, match="repeat"):
        m.update(["a", "a"], np.array([1.0, 2.0]), 4.0, 4.0)
