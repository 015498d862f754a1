"""The simulated robot: a pybullet world, task suites and scripted experts (no ROS here)."""
