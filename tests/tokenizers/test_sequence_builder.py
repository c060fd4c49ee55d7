import pytest
import torch

from fmmm.tokenizers import (
    ActionTokenizer,
    AudioTokenizer,
    ImageTokenizer,
    Modality,
    MultimodalBatch,
    Segment,
    SequenceBuilder,
    StateNormalizer,
    VideoTokenizer,
    default_text_tokenizer,
    pack_samples,
)

IGNORE = -100


@pytest.fixture(scope="module")
def builder():
    generator = torch.Generator().manual_seed(0)
    return SequenceBuilder(
        default_text_tokenizer(),
        image_tokenizer=ImageTokenizer(16, 8),
        video_tokenizer=VideoTokenizer(16, 8, 2),
        audio_tokenizer=AudioTokenizer(n_mels=16, frames_per_patch=5),
        action_tokenizer=ActionTokenizer().fit(torch.randn(500, 7, generator=generator)),
        state_normalizer=StateNormalizer().fit(torch.randn(500, 9, generator=generator)),
    )


def _image(seed=0):
    return torch.randint(
        0, 256, (3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_modality_ids_follow_the_contract():
    assert [int(m) for m in Modality] == [0, 1, 2, 3, 4, 5, 6]
    assert [m.key for m in Modality][1:] == ["text", "image", "video", "audio", "action", "state"]


def test_text_sample_is_causal_with_shifted_targets(builder):
    batch = builder.build([builder.text_sample("pick up the red cube")], context_length=16)
    n = int((batch.sample_ids == 1).sum())
    ids = batch.input_ids[0, :n]
    assert ids[0] == builder.text_tokenizer.bos_id and ids[-1] == builder.text_tokenizer.eos_id
    assert torch.equal(batch.targets[0, : n - 1], ids[1:])
    assert (batch.targets[0, n - 1 :] == IGNORE).all()
    assert torch.equal(batch.attention_mask[0, :n, :n], torch.ones(n, n, dtype=torch.bool).tril())
    assert batch.positions[0, :n, 0].tolist() == list(range(n))
    assert (batch.positions[0, :, 1:] == 0).all()
    assert not batch.prefix.any()
    assert (batch.modality[0, n:] == Modality.PAD).all() and (batch.input_ids[0, n:] == 0).all()


def test_caption_sample_has_bidirectional_image_prefix_and_loss_only_on_caption(builder):
    image = _image()
    batch = builder.build([builder.caption_sample("a red cube", image=image)], 40)
    modality, prefix = batch.modality[0], batch.prefix[0]
    image_at = (modality == Modality.IMAGE).nonzero().flatten()
    assert len(image_at) == 4
    n_prefix = int(prefix.sum())
    assert prefix[:n_prefix].all() and image_at.max() < n_prefix
    # every prefix token sees the whole prefix, including later image patches
    assert batch.attention_mask[0, :n_prefix, :n_prefix].all()
    assert not batch.attention_mask[0, :n_prefix, n_prefix:].any()
    # loss exactly on the caption tokens (and EOS), predicted from the previous position
    caption = builder.text_tokenizer.encode(["a red cube"], add_eos=True)[0]
    assert batch.targets[0][batch.loss_mask[0]].tolist() == caption
    assert batch.loss_mask[0, n_prefix - 1]
    # image features are the tokenizer's patches, positions (segment start, row, col)
    patches, _ = builder.image_tokenizer.encode(image[None])
    assert torch.equal(batch.features["image"], patches[0])
    start = int(image_at[0])
    expected = [[start, 0, 0], [start, 0, 1], [start, 1, 0], [start, 1, 1]]
    assert batch.positions[0, image_at].tolist() == expected
    assert batch.positions[0, start + 4, 0] == start + 4


def test_video_and_audio_caption_samples_carry_time_positions(builder):
    video = torch.rand(4, 3, 16, 16)
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(1))
    batch = builder.build(
        [
            builder.caption_sample("moving", video=video),
            builder.caption_sample("noise", audio=wave, sample_rate=16000),
        ],
        64,
        pack=False,
    )
    video_pos = batch.positions[0][batch.modality[0] == Modality.VIDEO]
    start = int(video_pos[0, 0])
    assert video_pos[:, 0].tolist() == [start] * 4 + [start + 1] * 4
    audio_pos = batch.positions[1][batch.modality[1] == Modality.AUDIO]
    assert audio_pos[:, 0].tolist() == list(range(int(audio_pos[0, 0]), int(audio_pos[0, 0]) + 21))
    assert (audio_pos[:, 1:] == 0).all()
    assert batch.features["video"].shape == (8, 2 * 3 * 64)
    assert batch.features["audio"].shape == (21, 16 * 5)


def test_vla_sample_has_loss_only_on_action_tokens_in_the_shared_vocabulary(builder):
    actions = torch.randn(3, 7, generator=torch.Generator().manual_seed(2))
    sample = builder.vla_sample([_image(0), _image(1)], torch.randn(9), "stack the cubes", actions)
    batch = builder.build([sample], 64)
    offset = builder.action_offset
    assert offset == builder.text_tokenizer.vocab_size
    assert builder.vocab_size == offset + 256
    action_ids = batch.input_ids[0][batch.modality[0] == Modality.ACTION]
    assert len(action_ids) == 21 and action_ids.min() >= offset
    assert batch.targets[0][batch.loss_mask[0]].tolist() == action_ids.tolist()
    decoded = builder.action_tokenizer.decode((action_ids - offset).view(3, 7))
    assert torch.equal(
        decoded, builder.action_tokenizer.decode(builder.action_tokenizer.encode(actions))
    )
    # images, state and instruction are one bidirectional prefix; actions are causal
    prefix = batch.prefix[0]
    assert prefix[batch.modality[0] == Modality.IMAGE].all()
    assert prefix[batch.modality[0] == Modality.STATE].all()
    assert not prefix[batch.modality[0] == Modality.ACTION].any()
    assert batch.features["image"].shape == (8, 192) and batch.features["state"].shape == (1, 9)
    # without actions the sample ends at the action marker, ready to decode
    open_sample = builder.vla_sample([_image(0)], torch.randn(9), "stack the cubes")
    open_batch = builder.build([open_sample], 64)
    last = int((open_batch.sample_ids[0] > 0).sum()) - 1
    assert open_batch.input_ids[0, last] == builder.text_tokenizer.action_id


def test_packing_keeps_samples_apart(builder):
    samples = [
        builder.text_sample("the red cube"),
        builder.caption_sample("a cube", image=_image()),
    ]
    batch = builder.build(samples, 40)
    assert batch.input_ids.shape == (1, 40)
    sample_ids = batch.sample_ids[0]
    first, second = sample_ids == 1, sample_ids == 2
    assert first.any() and second.any()
    mask = batch.attention_mask[0]
    assert not mask[first][:, second].any() and not mask[second][:, first].any()
    # positions restart at 0 for each packed sample
    assert batch.positions[0][second][0, 0] == 0
    # the last token of sample 1 does not predict the first of sample 2
    assert batch.targets[0, int(first.nonzero().max())] == IGNORE
    # padding attends to nothing real, and nothing real attends to padding
    pad = sample_ids == 0
    assert not mask[pad][:, ~pad].any() and not mask[~pad][:, pad].any()


def test_first_fit_packing_opens_rows_only_when_needed(builder):
    samples = [builder.text_sample("a " * n) for n in (10, 10, 2)]
    lengths = [len(pack_samples([s], 64).input_ids[0].nonzero()) for s in samples]
    context = lengths[0] + lengths[2] + 1
    batch = builder.build(samples, context)
    assert batch.input_ids.shape[0] == 2
    assert batch.sample_ids[0].max() == 2  # the third sample fits beside the first
    unpacked = builder.build(samples, context, pack=False)
    assert unpacked.input_ids.shape[0] == 3 and unpacked.sample_ids.max() == 1


def test_features_are_in_row_major_order_across_the_batch(builder):
    images = [_image(seed) for seed in range(3)]
    samples = [builder.caption_sample("x", image=image) for image in images]
    batch = builder.build(samples, 12, pack=True)
    expected = torch.cat([builder.image_tokenizer.encode(im[None])[0][0] for im in images])
    assert batch.input_ids.shape[0] == 3
    assert torch.equal(batch.features["image"], expected)
    assert int((batch.modality == Modality.IMAGE).sum()) == batch.features["image"].shape[0]


def test_same_samples_same_batch(builder):
    def build():
        sample = builder.vla_sample([_image()], torch.ones(9), "go", torch.zeros(2, 7))
        return builder.build([sample, builder.text_sample("hello")], 48)

    first, second = build(), build()
    for name in (
        "input_ids",
        "modality",
        "positions",
        "sample_ids",
        "prefix",
        "attention_mask",
        "targets",
    ):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert all(torch.equal(first.features[k], second.features[k]) for k in first.features)


def test_batch_dtypes_shapes_and_to_device(builder):
    batch = builder.build([builder.caption_sample("a cube", image=_image())], 16)
    assert batch.input_ids.dtype == batch.modality.dtype == batch.targets.dtype == torch.long
    assert batch.positions.shape == (1, 16, 3) and batch.positions.dtype == torch.long
    assert batch.prefix.dtype == batch.attention_mask.dtype == torch.bool
    assert batch.attention_mask.shape == (1, 16, 16)
    moved = batch.to("meta")
    assert isinstance(moved, MultimodalBatch)
    assert moved.input_ids.is_meta and moved.features["image"].is_meta


def test_too_long_sample_raises_unless_truncated(builder):
    sample = builder.caption_sample("a long caption about the cube", image=_image())
    with pytest.raises(ValueError, match="more than context_length"):
        builder.build([sample], 8)
    batch = builder.build([sample], 8, truncate=True)
    assert (batch.sample_ids == 1).all()
    assert batch.features["image"].shape[0] == int((batch.modality == Modality.IMAGE).sum())


def test_bad_segments_raise_value_error(builder):
    text = Segment(Modality.TEXT, ids=[5, 6])
    late_prefix = Segment(Modality.TEXT, ids=[7], prefix=True)
    with pytest.raises(ValueError, match="prefix segments must come before"):
        pack_samples([[text, late_prefix]], 8)
    with pytest.raises(ValueError, match="cannot carry loss"):
        Segment(Modality.IMAGE, features=torch.zeros(2, 4), loss=True)
    with pytest.raises(ValueError, match="prefix tokens cannot carry loss"):
        Segment(Modality.TEXT, ids=[5], prefix=True, loss=True)
    with pytest.raises(ValueError, match=">= 0"):
        Segment(Modality.TEXT, ids=[-1])
    with pytest.raises(ValueError, match="NaN"):
        Segment(Modality.STATE, features=torch.full((1, 3), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        Segment(Modality.TEXT, ids=[])
    with pytest.raises(ValueError, match="different widths"):
        pack_samples(
            [[Segment(Modality.STATE, features=torch.zeros(1, 3))],
             [Segment(Modality.STATE, features=torch.zeros(1, 4))]],
            4,
        )  # fmt: skip
    with pytest.raises(ValueError, match="rank 3"):
        builder.image(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="empty"):
        builder.text_sample("")
    with pytest.raises(ValueError, match="NaN"):
        builder.actions(torch.full((2, 7), float("nan")))
    with pytest.raises(ValueError, match="exactly one"):
        builder.caption_sample("x")
