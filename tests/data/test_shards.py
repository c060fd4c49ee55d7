import json
import tarfile

import numpy as np
import pytest

from fmmm.data.shards import (
    ShardDataset,
    ShardError,
    ShardWriter,
    decode_image,
    decode_video,
    encode_frames,
    encode_image,
    iter_samples,
    list_shards,
    make_sample,
    write_shard,
)


def _image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _image_text_samples(n: int) -> list[dict]:
    return [
        make_sample(f"s{i:04d}", f"caption {i}", image=encode_image(_image(i)), json_meta={"i": i})
        for i in range(n)
    ]


def test_tar_round_trip_keeps_every_field_and_rolls_shards(tmp_path):
    samples = _image_text_samples(7)
    samples.append(make_sample("a0", "speech", audio=b"RIFF....", ext={"audio": "wav"}))
    samples.append(make_sample("v0", "clip", video=encode_frames(np.zeros((2, 4, 4, 3), np.uint8))))
    with ShardWriter(tmp_path, fmt="tar", samples_per_shard=4) as writer:
        for sample in samples:
            writer.write(sample)
    paths = list_shards(tmp_path)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    read = [s for p in paths for s in iter_samples(p)]
    assert [s["key"] for s in read] == [s["key"] for s in samples]
    for original, back in zip(samples, read):
        for field in ("modality", "text", "image", "audio", "video", "json", "ext"):
            assert back[field] == original[field], field
    assert np.array_equal(decode_image(read[3]), _image(3))
    assert decode_video(read[-1]).shape == (2, 4, 4, 3)
    assert read[0]["source"] == str(paths[0]) and read[1]["position"] > read[0]["position"]


def test_jsonl_round_trip_and_line_numbers(tmp_path):
    path = tmp_path / "docs.jsonl"
    count = write_shard(path, [make_sample(f"d{i}", f"text {i}") for i in range(3)])
    assert count == 3
    read = list(iter_samples(path))
    assert [(s["key"], s["text"], s["position"]) for s in read] == [
        ("d0", "text 0", 1),
        ("d1", "text 1", 2),
        ("d2", "text 2", 3),
    ]


def test_shard_dataset_reads_any_sample_like_a_full_pass(tmp_path):
    with ShardWriter(tmp_path / "tar", fmt="tar", samples_per_shard=3) as writer:
        for sample in _image_text_samples(7):
            writer.write(sample)
    write_shard(tmp_path / "tar" / "z.jsonl", [make_sample(f"d{i}", f"text {i}") for i in range(2)])
    in_order = [s for path in list_shards(tmp_path / "tar") for s in iter_samples(path)]
    dataset = ShardDataset(tmp_path / "tar")
    assert len(dataset) == 9
    for index in (8, 0, 4, 7, 3):  # any order: each read seeks to its own sample
        read, full = dataset[index], in_order[index]
        for field in ("key", "modality", "text", "image", "ext", "source"):
            assert read[field] == full[field], (index, field)
    write_shard(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="no samples"):
        ShardDataset(tmp_path / "empty.jsonl")


def test_writer_output_is_byte_identical_for_same_samples(tmp_path):
    write_shard(tmp_path / "a.tar", _image_text_samples(3))
    write_shard(tmp_path / "b.tar", _image_text_samples(3))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_invalid_json_line_is_reported_with_line_and_skipped(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok one"}\n{"text": broken\n{"id": 7}\n{"text": "ok two"}\n')
    errors = []
    texts = [s["text"] for s in iter_samples(path, on_error=errors.append)]
    assert texts == ["ok one", "ok two"]
    assert [(e.source, e.position) for e in errors] == [(str(path), 2), (str(path), 3)]
    with pytest.raises(ShardError, match=r"bad.jsonl:2: invalid JSON"):
        list(iter_samples(path))


@pytest.mark.parametrize("cut", ["member_data", "header_boundary", "mid_header"])
def test_truncated_tar_yields_complete_samples_then_reports_position(tmp_path, cut):
    path = tmp_path / "t.tar"
    write_shard(path, _image_text_samples(6))
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    size = {
        "member_data": members[9].offset_data + 100,
        "header_boundary": members[7].offset,
        "mid_header": members[7].offset + 100,
    }[cut]
    path.write_bytes(data[:size])
    errors = []
    read = list(iter_samples(path, on_error=errors.append))
    assert len(errors) == 1 and errors[0].source == str(path)
    assert "truncated" in errors[0].message
    # Every sample whose members all lie before the cut is intact; nothing after it is invented.
    assert 1 <= len(read) <= 5
    assert all(s["image"] is not None and s["text"] for s in read)
    assert errors[0].position >= read[-1]["position"]


def test_undecodable_image_raises_shard_error_with_position(tmp_path):
    path = tmp_path / "x.tar"
    write_shard(path, [make_sample("k", "cap", image=b"not an image", ext={"image": "jpg"})])
    (sample,) = iter_samples(path)
    with pytest.raises(ShardError, match=r"x.tar:0: undecodable image 'k'"):
        decode_image(sample)


def test_list_shards_sorts_folders_and_globs_and_rejects_missing(tmp_path):
    (tmp_path / "b").mkdir()
    write_shard(tmp_path / "b" / "z.jsonl", [make_sample("x", "t")])
    write_shard(tmp_path / "a.jsonl", [make_sample("y", "t")])
    assert [p.name for p in list_shards(tmp_path)] == ["a.jsonl", "z.jsonl"]
    assert [p.name for p in list_shards(str(tmp_path / "*.jsonl"))] == ["a.jsonl"]
    with pytest.raises(ValueError, match="no such file"):
        list_shards(tmp_path / "missing")


def test_jsonl_writer_rejects_image_samples_and_dotted_tar_keys(tmp_path):
    with pytest.raises(ValueError, match="text-only"):
        write_shard(tmp_path / "a.jsonl", _image_text_samples(1))
    with pytest.raises(ValueError, match="contain no '.'"):
        write_shard(tmp_path / "a.tar", [make_sample("a.b", "t")])
    assert not list(tmp_path.iterdir())


def test_jsonl_record_extra_fields_survive_rewrite(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "q", "text": "hello", "url": "u"}) + "\n")
    write_shard(tmp_path / "out.jsonl", iter_samples(src))
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {
        "id": "q",
        "text": "hello",
        "url": "u",
    }


def _wav(signal: np.ndarray, rate: int = 16000) -> bytes:
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(signal.shape[0])
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes((signal.T * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def test_audio_decodes_wav_channels_and_flac_through_ffmpeg(tmp_path):
    import subprocess

    import imageio_ffmpeg

    from fmmm.data.shards import decode_audio

    signal = np.stack([np.sin(np.arange(800) / 7), 0.5 * np.cos(np.arange(800) / 3)])
    wav = _wav(signal)
    flac = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-loglevel",
            "error",
            "-i",
            "pipe:0",
            "-f",
            "flac",
            "pipe:1",
        ],
        input=_wav(signal[:1]),
        capture_output=True,
        check=True,
    ).stdout
    write_shard(
        tmp_path / "a.tar",
        [
            make_sample("w", "two channels", audio=wav),
            make_sample("f", "flac", audio=flac, ext={"audio": "flac"}),
            make_sample("bad", "junk", audio=b"junk", ext={"audio": "flac"}),
        ],
    )
    wav_sample, flac_sample, bad = iter_samples(tmp_path / "a.tar")
    waveform, rate = decode_audio(wav_sample)
    assert rate == 16000 and waveform.shape == (2, 800)
    assert np.abs(waveform - signal).max() < 1e-3
    waveform, rate = decode_audio(flac_sample)
    assert rate == 16000 and waveform.shape == (1, 800)
    assert np.abs(waveform[0] - signal[0]).max() < 1e-3
    with pytest.raises(ShardError, match="undecodable audio 'bad'"):
        decode_audio(bad)
