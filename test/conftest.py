"""Test set-up shared by every test: an isolated DDS domain and the project's DDS profile.

A random ROS_DOMAIN_ID per test session keeps parallel test runs on one machine
from hearing each other, and each pytest-xdist worker has a domain of its own; discovery
stays on localhost.
"""

import os
import random
import signal

from workspace import has_ros2_cli

from gen_theta_model.config import share_dir

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
# pytest-xdist workers (`make test` runs the files on several) inherit the controller's domain: each
# worker takes the next one, so tests on two workers never hear each other's /arm6 topics.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):  # "gw0", "gw1", ...
    os.environ["ROS_DOMAIN_ID"] = str(int(os.environ["ROS_DOMAIN_ID"]) + 1 + int(worker.removeprefix("gw")))
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
