"""The QoS profiles of every gen_theta node, chosen once.

Sensor streams are best effort and volatile for subscribers (the latest sample wins and
a late one is worthless); their publishers are reliable, which matches best-effort and
reliable subscribers alike. Commands are reliable. The instruction and task are latched
(transient local), so a node that starts late still gets the current one.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

SENSOR_QOS = qos_profile_sensor_data  # subscribing to cameras, joint_states, object poses
SENSOR_PUBLISH_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # matches any subscriber
# The recorder's sensor subscriptions: a deep history, so a burst waits in the DDS reader
# instead of overwriting unread samples while the executor is busy.
RECORD_QOS = QoSProfile(depth=100, reliability=SENSOR_QOS.reliability, durability=SENSOR_QOS.durability)
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
