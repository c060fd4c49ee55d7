import json

import numpy as np
import pytest

from fmmm.data.shards import ShardWriter, encode_image, make_sample
from fmmm.train.metrics import read_jsonl


def write_user_shards(root):
    rng = np.random.default_rng(0)
    with ShardWriter(root / "pairs", "tar", samples_per_shard=10) as writer:  # img2dataset layout
        for index in range(24):
            colour = ["red", "green", "blue"][index % 3]
            image = np.zeros((40, 40, 3), dtype=np.uint8)
            image[..., index % 3] = 200 + rng.integers(0, 50)
            sample = make_sample(
                f"{index:06d}", f"a {colour} square", image=encode_image(image, "jpg")
            )
            sample["json"] = {"url": f"https://example.com/{index}.jpg"}
            writer.write(sample)
    (root / "docs.jsonl").write_text(
        "".join(
            json.dumps({"text": f"document number {i} about colours"}) + "\n" for i in range(30)
        )
    )


def overrides(tmp_path, sources):
    return [
        f"out_dir={tmp_path / 'run'}",
        f"data.sources={sources}",
        "objectives.contrastive_modalities=[image]",
        "objectives.masked=0",
        "train.steps=2",
        "train.eval_at_start=false",
        "train.logging.tensorboard=false",
        "train.logging.progress=false",
    ]


def test_user_webdataset_and_jsonl_shards_plug_into_the_mixture(tmp_path):
    from fmmm.train.pretrain import run

    write_user_shards(tmp_path)
    sources = (
        f"[{{kind: image_text, weight: 0.6, path: '{tmp_path / 'pairs'}'}}, "
        f"{{kind: text, weight: 0.4, path: '{tmp_path / 'docs.jsonl'}'}}]"
    )
    result = run("configs/pretrain/smoke.yaml", overrides(tmp_path, sources))
    assert result.status == "completed"
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(np.isfinite(r["contrastive_image_loss"]) and np.isfinite(r["ar_loss"]) for r in rows)


def test_corrupt_user_shard_is_reported_with_file_and_position(tmp_path):
    from fmmm.train.pretrain import run

    (tmp_path / "docs.jsonl").write_text('{"text": "fine"}\nnot json\n')
    sources = f"[{{kind: text, path: '{tmp_path / 'docs.jsonl'}'}}]"
    with pytest.raises(ValueError, match=r"docs.jsonl:2: invalid JSON"):
        run("configs/pretrain/smoke.yaml", overrides(tmp_path, sources))
