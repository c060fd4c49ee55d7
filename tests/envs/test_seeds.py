import pytest

from fmmm.envs.seeds import episode_seed


def test_episode_seeds_depend_only_on_task_seed_and_index():
    assert episode_seed("pick_place", 0, 3, "eval") == episode_seed("pick_place", 0, 3, "eval")
    seeds = {episode_seed(t, s, i, "eval") for t in ("a", "b") for s in (0, 1) for i in range(50)}
    assert len(seeds) == 200


def test_training_and_evaluation_seed_streams_are_disjoint():
    train = {episode_seed("pick_place", s, i, "train") for s in range(3) for i in range(500)}
    evaluation = {episode_seed("pick_place", s, i, "eval") for s in range(3) for i in range(500)}
    assert not train & evaluation
    assert all(seed >> 62 == 0 for seed in train) and all(seed >> 62 == 1 for seed in evaluation)


def test_bad_seed_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        episode_seed("pick_place", 0, 0, "test")
    with pytest.raises(ValueError, match=">= 0"):
        episode_seed("pick_place", -1, 0, "eval")


def test_validation_seeds_are_disjoint_from_every_other_split():
    streams = {
        split: {episode_seed("reach", s, i, split) for s in range(3) for i in range(300)}
        for split in ("train", "eval", "policy", "val")
    }
    for split, seeds in streams.items():
        others = set().union(*(streams[other] for other in streams if other != split))
        assert not seeds & others, split
    assert all(seed >> 62 == 3 for seed in streams["val"])


def test_existing_splits_keep_their_seeds():
    # datasets and results record these seeds: adding a split must not move them
    assert episode_seed("pick_place", 0, 0, "train") == 700670823065085545
    assert episode_seed("pick_place", 0, 0, "eval") == 8380072321080613966
    assert episode_seed("pick_place", 0, 0, "policy") == 12737023457033579189
