"""Record episodes of a robot: `ros2 launch gen_theta record.launch.py robot:=arm6 output_dir:=episodes`.

Start/stop episodes with the recorder's services (names in config/topics.yaml), e.g.
`ros2 service call /arm6/recorder/start std_srvs/srv/Trigger`. The recorder's other
parameters come from ``params_file`` (default: the package's config/recorder.yaml, which
lists them all); the arguments here win. It is a managed (lifecycle) node: ``lifecycle:=auto``
brings it to active, ``lifecycle:=manual`` leaves it unconfigured for a lifecycle manager.
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument("robot", default_value="arm6", description="robot name (config/robots/<robot>.yaml)"),
        DeclareLaunchArgument("output_dir", default_value="episodes", description="directory for the episode bags"),
        DeclareLaunchArgument(
            "topics", default_value="['']",
            description="topics to record; [''] records every configured topic of the robot; "
            "entries are names from config/topics.yaml or 'topic=pkg/msg/Type'",
        ),
        DeclareLaunchArgument("compressed", default_value="false", description="record cameras as CompressedImage"),
        DeclareLaunchArgument("task", default_value="", description="task name stored with each episode"),
        DeclareLaunchArgument("category", default_value="", description="task category stored with each episode"),
        DeclareLaunchArgument("action_topic", default_value="",
                              description="teleop: a leader arm's sensor_msgs/JointState topic, recorded and used "
                              "by ingest as the actions (e.g. /leader/joint_states)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("gen_theta"), "config",
                                                                  "recorder.yaml"]),
                              description="recorder parameters (ROS 2 YAML); the arguments above win"),
        DeclareLaunchArgument("lifecycle", default_value="auto", choices=["auto", "manual"],
                              description="auto: the recorder configures and activates itself; manual: it waits "
                              "unconfigured for a lifecycle manager (ros2 lifecycle set, nav2 lifecycle_manager)"),
    ]
    profile = PathJoinSubstitution([FindPackageShare("gen_theta"), "config", "fastdds.xml"])
    recorder = LifecycleNode(
        package="gen_theta",
        executable="recorder",
        name="recorder",
        namespace="",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), {
            "autostart": EqualsSubstitution(LaunchConfiguration("lifecycle"), "auto"),
            "robot": LaunchConfiguration("robot"),
            "output_dir": LaunchConfiguration("output_dir"),
            "topics": LaunchConfiguration("topics"),
            "compressed": LaunchConfiguration("compressed"),
            "task": LaunchConfiguration("task"),
            "category": LaunchConfiguration("category"),
            "action_topic": LaunchConfiguration("action_topic"),
        }],
    )
    return LaunchDescription([*args, SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile), recorder])
