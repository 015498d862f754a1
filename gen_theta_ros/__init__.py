"""gen_theta's ROS 2 shell: thin rclpy nodes over gen_theta_model, and the `gen-theta` command."""
