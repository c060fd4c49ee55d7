"""Policy evaluation in the MuJoCo tasks: rollouts, success statistics, videos (`python -m fmmm.eval`)."""
