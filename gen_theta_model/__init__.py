"""gen_theta's core: embodiments, simulation, data, policy, training and measurement. Never imports rclpy."""
