import math

from fmmm.train.spike import SpikeConfig, SpikeGuard


def test_non_finite_values_are_spikes_even_without_history():
    guard = SpikeGuard(SpikeConfig())
    assert "non-finite" in guard.check(math.nan, 1.0)
    assert "non-finite" in guard.check(1.0, math.inf)
    assert guard.check(1.0, 1.0) is None


def test_z_score_flags_only_far_outliers_and_rollback_after_consecutive_spikes():
    guard = SpikeGuard(SpikeConfig(window=20, min_history=5, z_threshold=6, max_consecutive=2))
    for i in range(20):
        assert guard.check(2.0 - 0.01 * i, 1.0) is None
        guard.update(2.0 - 0.01 * i, 1.0, spike=False)
    assert guard.check(2.0, 1.2) is None  # within noise of a slowly falling curve
    assert "loss" in guard.check(50.0, 1.0)
    assert "gradient norm" in guard.check(1.9, 100.0)
    assert guard.update(50.0, 1.0, spike=True) is False
    assert guard.update(50.0, 1.0, spike=True) is True
    restored = SpikeGuard(guard.cfg)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()
