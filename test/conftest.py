"""Test set-up shared by every test: an isolated DDS domain and the project's DDS profile.

A random ROS_DOMAIN_ID per test session keeps parallel test runs on one machine
from hearing each other; discovery stays on localhost.
"""

import os
import random
import signal

from workspace import has_ros2_cli

from gen_theta_model.config import share_dir

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(share_dir() / "config" / "fastdds.xml"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["HF_HUB_OFFLINE"] = "1"  # pretrained backbones in tests are tiny local ones: never the network

# A shell without job control starts background commands (`make test &`) with SIGINT ignored, and
# every process the tests start would inherit that: the Ctrl-C tests would see tools that cannot be
# stopped. A handled SIGINT here becomes the default one in the children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tests that drive `ros2 run` / `ros2 launch` need ros2cli and launch_ros: a ROS 2 install has
# them, a plain venv gets them from shared/ros2-wheels (`make test` installs them when present).
collect_ignore = [] if has_ros2_cli() else [
    "test_ros2_cli.py", "test_bringup_launch.py", "test_record_launch.py"
]
