"""ament_python build of the gen_theta package (colcon) and of the plain-venv install (pip)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "gen_theta"

# Every node and tool is a console script: colcon installs them into lib/gen_theta
# (setup.cfg) so that `ros2 run gen_theta <exe>` finds them; pip puts them on PATH.
EXECUTABLES = {
    "gen-theta": "gen_theta_ros.cli:main",
    "sim_robot": "gen_theta_ros.sim_robot:main",
    "expert": "gen_theta_ros.expert:main",
    "recorder": "gen_theta_ros.recorder:main",
    "policy_server": "gen_theta_ros.policy_server:main",
    "train": "gen_theta_model.train:main",
    "collect": "gen_theta_ros.collect:main",
    "ingest": "gen_theta_model.data.ingest:main",
    "evaluate": "gen_theta_model.evaluate:main",
    "rollout": "gen_theta_ros.rollout:main",
}

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["gen_theta_model", "gen_theta_model.*", "gen_theta_ros", "gen_theta_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/robots", glob("config/robots/*.yaml")),
        (f"share/{PACKAGE}/config/ros2_control", glob("config/ros2_control/*.yaml")),
        (f"share/{PACKAGE}/config/mixtures", glob("config/mixtures/*.yaml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
        (f"share/{PACKAGE}/config/scaling", glob("config/scaling/*.yaml")),
        (f"share/{PACKAGE}/config/scaling/mixtures", glob("config/scaling/mixtures/*.yaml")),
        (f"share/{PACKAGE}/urdf", glob("urdf/*.urdf")),
        *((f"share/{PACKAGE}/{d}", glob(f"{d}/*.json")) for d in sorted(glob("config/backbones/*"))),
        # the shipped checkpoint (docs/policy.md): weights, config, embodiments and normalisation statistics
        (f"share/{PACKAGE}/models/gen_theta_sim", glob("models/gen_theta_sim/*.*")),
        (f"share/{PACKAGE}/models/gen_theta_sim/norm_stats", glob("models/gen_theta_sim/norm_stats/*")),
    ],
    package_data={"gen_theta_model": ["py.typed"]},
    # Pinned as in requirements.lock (which `make` installs; pip install here runs with --no-deps).
    install_requires=["setuptools", "grpcio==1.85.3"],
    extras_require={"test": ["pytest"]},
    zip_safe=True,
    maintainer="gen_theta maintainers",
    maintainer_email="maintainers@gen-theta.dev",
    description="One harmonic transformer policy for many robots, as a ROS 2 package.",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in EXECUTABLES.items()]},
)
