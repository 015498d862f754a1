"""Managed (lifecycle) nodes: the shell the policy server and the recorder share.

A ``ManagedNode`` is an rclpy ``LifecycleNode`` (states unconfigured, inactive, active,
finalized; services ``<node>/change_state``, ``<node>/get_state``, ...). Its subclass says
what each transition does:

- ``configure``: read the parameters, load what the node needs, create its topics,
  services and timers (through ``own``, so that cleanup can destroy them). One of the
  subclass's ``configure_errors`` (a bad checkpoint, an unknown robot, an unreachable host)
  makes the transition FAIL with one log line naming it; the node stays unconfigured.
- ``activate`` / ``deactivate``: start and stop the node's work (commanding, recording).
- ``release``: let go of what ``configure`` loaded (the model, threads, open files); the
  owned entities are destroyed after it. Cleanup runs it; so does a failed configure.
- shutdown, from any state: deactivate if active, release if configured, then the process
  ends (exit code 0).

With the ``autostart`` parameter (default true) ``run_node`` (gen_theta_ros/runtime.py)
drives the node through configure and activate itself, as `ros2 run` and `gen-theta` users
expect (a configure that fails then ends the process, its error in one line); with
``autostart:=false`` it waits, unconfigured, for a lifecycle manager
(`ros2 lifecycle set`, nav2's lifecycle_manager, launch's ``lifecycle:=auto``).
"""

from __future__ import annotations

import gc
import traceback
from typing import TypeVar

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.action import ActionClient
from rclpy.client import Client
from rclpy.guard_condition import GuardCondition
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer

from gen_theta_model.node_parameters import AUTOSTART, AUTOSTART_HELP

Entity = TypeVar("Entity", Publisher, Subscription, Service, Client, Timer, ActionClient, GuardCondition)


class ManagedNode(LifecycleNode):
    """A lifecycle node that owns what ``configure`` creates; see the module docstring."""

    configure_errors: tuple[type[Exception], ...] = (ValueError, OSError)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.declare_parameter("autostart", AUTOSTART, ParameterDescriptor(read_only=True, description=AUTOSTART_HELP))
        self._owned: list[Publisher | Subscription | Service | Client | Timer | ActionClient] = []
        self._configured = False
        self._active = False
        self._configure_error: Exception | None = None
        self._autostarting = False  # configure's error is raised to the caller, not logged

    # -- what a subclass does at each transition -----------------------------------------
    def configure(self) -> None:
        """Read the parameters, load, create topics/services/timers (``own``); raise a ``configure_errors``."""
        raise NotImplementedError

    def activate(self) -> None:
        """Start the node's work."""

    def deactivate(self) -> None:
        """Stop the node's work, leaving everything safe (robots held, episodes closed)."""

    def release(self) -> None:
        """Let go of what ``configure`` loaded; also called after a configure that failed half-way."""

    def own(self, entity: Entity) -> Entity:
        """Keep ``entity`` (created by this node) to destroy it at cleanup; returns it."""
        self._owned.append(entity)
        return entity

    # -- the transitions -------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.configure()
        except self.configure_errors as err:
            self._configure_error = err
            if not self._autostarting:  # autostart raises it: `gen-theta` says it in one line
                self.get_logger().error(f"configure failed: {err}")
            self._release_all()
            return TransitionCallbackReturn.FAILURE
        except Exception as err:  # a bug: rclpy turns it into ERROR without a word, so say where it was
            self._configure_error = err
            self.get_logger().error(f"configure: unexpected error:\n{traceback.format_exc()}")
            raise
        self._configured = True
        # What the node loaded lives until cleanup: frozen, the collector never walks it
        # again (a full collection of a loaded policy server took 40-120 ms: stalled commands).
        gc.freeze()
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate()
        self._active = True
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.deactivate()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        if self.context.ok():  # end the process once this transition's reply is sent
            self.create_timer(0.0, lambda: rclpy.try_shutdown(context=self.context))
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything after an unexpected exception in a transition: back to unconfigured."""
        self.get_logger().error(f"error in a transition from '{state.label}': releasing, back to unconfigured")
        self._active = False
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def _release_all(self) -> None:
        self.release()
        destroy = {Publisher: self.destroy_publisher, Subscription: self.destroy_subscription,
                   Service: self.destroy_service, Client: self.destroy_client, Timer: self.destroy_timer,
                   ActionClient: ActionClient.destroy, GuardCondition: self.destroy_guard_condition}
        for entity in reversed(self._owned):
            destroy[next(t for t in destroy if isinstance(entity, t))](entity)
        self._owned.clear()
        self._configured = False

    # -- start-up and exit ---------------------------------------------------------------------
    def autostart(self) -> None:
        """Configure and activate when the ``autostart`` parameter is true; raise what made configure
        fail (``gen-theta`` prints it in one line). Without autostart the node waits, unconfigured,
        for a lifecycle manager.
        """
        if not self.get_parameter("autostart").value:
            self.get_logger().info("unconfigured: waiting for a lifecycle manager (autostart is false)")
            return
        self._autostarting = True
        try:
            configured = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
        finally:
            self._autostarting = False
        if not configured:
            raise self._configure_error or RuntimeError(f"{self.get_name()}: configure failed")
        self.trigger_activate()

    def close(self) -> None:
        """Leave safely from any state: deactivate if active (while ROS still runs), release if configured."""
        if self._active and self.context.ok():
            self.deactivate()
        self._active = False
        if self._configured:
            self._release_all()
