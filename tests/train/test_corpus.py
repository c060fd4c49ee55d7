import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from fmmm.corpus.audio import read_wav, synth_audio_pair
from fmmm.corpus.build import CorpusConfig, build_corpus
from fmmm.corpus.scenes import COLOURS, SHAPES
from fmmm.data.shards import decode_image, decode_video, iter_samples, list_shards

SMALL = CorpusConfig(image_pairs=6, video_pairs=3, audio_pairs=4, text_docs=5, heldout=2)


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_corpus_is_deterministic_cached_and_in_the_user_shard_formats(tmp_path):
    root = build_corpus(SMALL, tmp_path / "a")
    assert digest(root) == digest(build_corpus(SMALL, tmp_path / "b"))
    stamp = (root / "corpus.json").stat().st_mtime_ns
    assert build_corpus(SMALL, tmp_path / "a") == root
    assert (root / "corpus.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    images = [s for p in list_shards(root / "image_text" / "train") for s in iter_samples(p)]
    assert len(images) == 6
    assert decode_image(images[0]).shape == (64, 64, 3)
    for sample in images:
        assert any(c in sample["text"] for c in COLOURS) and any(
            s in sample["text"] for s in SHAPES
        )
    video = next(iter_samples(list_shards(root / "video_text" / "heldout")[0]))
    assert decode_video(video).shape == (4, 64, 64, 3)
    texts = list(iter_samples(list_shards(root / "text" / "train")[0]))
    assert len(texts) == 5 and all(t["text"] for t in texts)


def test_rendered_caption_matches_the_pixels_it_describes():
    from fmmm.corpus.scenes import PlacedObject, render_poses, scene_caption

    obj = PlacedObject("cube", "red", 1, 0, (0.43, -0.2, 0.035))
    # render in a child process: an OpenGL context must not outlive this call in the test runner
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        empty = pool.submit(render_poses, {}).result()
        image = pool.submit(render_poses, {"red_cube": obj.xyz}).result()
    assert scene_caption([obj]) == "A red cube on the left."
    changed = np.abs(image.astype(int) - empty.astype(int)).sum(-1) > 60
    rows, cols = np.nonzero(changed)
    assert len(cols) > 4 and cols.mean() < 32  # the red object appears in the left half
    assert image[rows, cols, 0].mean() > image[rows, cols, 2].mean() + 40  # and it is red


def test_synthesised_audio_round_trips_through_wav_and_matches_its_caption():
    rng = np.random.default_rng(3)
    for _ in range(8):
        wave, caption = synth_audio_pair(rng)
        assert wave.shape == (16000,) and np.abs(wave).max() <= 1
        from fmmm.corpus.audio import wav_bytes

        decoded, rate = read_wav(wav_bytes(wave, 16000))
        assert rate == 16000 and np.abs(decoded - wave).max() < 1e-3
        loud = np.abs(wave).max() > 0.5
        assert ("loud" in caption) == loud, caption
