"""On-disk datasets of robot demonstrations: the fmmm format and LeRobot v2 import/export."""
