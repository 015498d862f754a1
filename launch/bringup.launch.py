"""Bring up robots and the policy server: `ros2 launch gen_theta bringup.launch.py robot:=arm6 checkpoint:=RUN`.

The graph (nodes, parameters, namespaces) is defined once in gen_theta_ros/graph.py;
`gen-theta bringup` starts the same graph without launch_ros. Any node ending ends
the bring-up, as it does there.
"""

from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from gen_theta_ros.graph import ARGUMENTS, BringupArgs, bringup_graph
from launch import LaunchContext, LaunchDescription


def dds_profile(context: LaunchContext) -> list:
    """Point Fast DDS at the shipped profile (a larger shared-memory segment for images),
    unless the user already chose one (as gen_theta_ros/runtime.py does for `gen-theta`).
    """
    if context.environment.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return []
    shipped = PathJoinSubstitution([FindPackageShare("gen_theta"), "config", "fastdds.xml"])
    return [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", shipped)]


def shut_down(context: LaunchContext) -> list:
    """End the launch when a node ends, unless it is ending already (a second Shutdown event would
    shut launch's ROS adapter down twice, which a LifecycleNode starts: "Cannot shutdown a ROS
    adapter that is not running", exit code 1).
    """
    return [] if context.is_shutdown else [EmitEvent(event=Shutdown())]


def launch_setup(context: LaunchContext) -> list:
    """Evaluate the launch arguments and build one launch_ros Node per graph node."""
    args = BringupArgs.from_strings({name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS})
    actions = []
    for spec in bringup_graph(args):
        # A managed node as a launch LifecycleNode: its transitions are launch events, and other launch
        # files may drive it with launch_ros.events.lifecycle.ChangeState (``lifecycle:=manual``).
        kind = LifecycleNode if spec.managed else Node
        node = kind(
            package="gen_theta",
            executable=spec.executable,
            name=spec.name,
            namespace=spec.namespace or "",
            parameters=[*spec.params_files, spec.parameters],
            output="screen",
        )
        stop_all = RegisterEventHandler(OnProcessExit(target_action=node, on_exit=[OpaqueFunction(function=shut_down)]))
        actions += [node, stop_all]
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in ARGUMENTS.items()
    ]
    return LaunchDescription([
        *declared,
        OpaqueFunction(function=dds_profile),
        OpaqueFunction(function=launch_setup),
    ])
