"""`python -m fmmm.demo`: tokenize a generated image, audio clip, sentence and action trajectory.

Prints what each tokenizer produced and the packed multimodal batch of a VLA-style sample.
"""

from __future__ import annotations

import argparse
import math
import sys

from fmmm.utils.cli import run_main

DEFAULT_SENTENCE = "Pick up the red cube and place it in the blue bowl."


def _summary(name: str, tensor) -> str:
    return f"{name} {tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"


def _runs(modality: list[int]) -> str:
    """Run-length summary of a modality row, e.g. 'text x2, image x64'."""
    from fmmm.tokenizers.sequence import Modality

    runs: list[list] = []
    for value in modality:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return ", ".join(f"{Modality(value).key} x{count}" for value, count in runs)


def run_demo(
    sentence: str = DEFAULT_SENTENCE, image_size: int = 64, patch_size: int = 8, seed: int = 0
) -> None:
    """Generate one input per modality, tokenize each and print the results."""
    import torch

    from fmmm.tokenizers import (
        ActionTokenizer,
        AudioTokenizer,
        ImageTokenizer,
        SequenceBuilder,
        StateNormalizer,
        default_text_tokenizer,
    )
    from fmmm.utils.seed import seed_everything

    seed_everything(seed)
    text_tokenizer = default_text_tokenizer()
    ids = text_tokenizer.encode([sentence])[0]
    pieces = [text_tokenizer.decode([[i]])[0] for i in ids]
    print(f"text   {sentence!r}")
    print(f"  byte-level BPE, vocab {text_tokenizer.vocab_size}: {len(ids)} tokens {ids}")
    print(f"  pieces {pieces}")
    print(f"  round trip exact: {text_tokenizer.decode([ids])[0] == sentence}")

    # a gradient background with a red square
    rows = torch.linspace(0, 1, 96)[:, None].expand(96, 128)
    image = torch.stack([rows * 0.3, rows * 0.5, 1 - rows * 0.5])
    image[:, 30:60, 50:80] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    image_tokenizer = ImageTokenizer(image_size, patch_size)
    patches, positions = image_tokenizer.encode(image[None])
    print(f"image  generated 3x96x128 float -> resized to {image_size}, {patch_size}px patches")
    print(f"  {_summary('patches', patches)}, {_summary('positions', positions)} (row, col)")
    print(f"  last patch at {positions[0, -1].tolist()}")

    rate, seconds = 22050, 1.0
    t = torch.arange(int(rate * seconds)) / rate
    chirp = torch.sin(2 * math.pi * (200 + 800 * t) * t) * 0.5
    audio_tokenizer = AudioTokenizer()
    audio_patches, audio_positions, audio_mask = audio_tokenizer.encode([chirp], rate)
    print(f"audio  {seconds:.1f}s chirp at {rate} Hz -> {audio_tokenizer.sample_rate} Hz log-mel")
    print(f"  {_summary('patches', audio_patches)}, {_summary('positions', audio_positions)}")
    print(f"  {int(audio_mask.sum())} valid patches of {audio_tokenizer.frames_per_patch} frames")

    steps = torch.linspace(0, 2 * math.pi, 50)[:, None]
    gripper = torch.where(torch.sin(3 * steps) > 0, 1.0, -1.0)
    arm = torch.cat([torch.sin(steps + k) for k in range(6)], dim=1)
    trajectory = torch.cat([arm + 0.05 * torch.randn(arm.shape), gripper], dim=1)
    action_tokenizer = ActionTokenizer().fit(trajectory)
    bins = action_tokenizer.encode(trajectory)
    inside = (trajectory >= action_tokenizer.low) & (trajectory <= action_tokenizer.high)
    error = (action_tokenizer.decode(bins) - trajectory).abs()[inside].max()
    half_bin = (
        (action_tokenizer.high - action_tokenizer.low) / action_tokenizer.num_bins / 2
    ).max()
    print(f"action trajectory {tuple(trajectory.shape)} -> {_summary('bins', bins)}")
    print(f"  first step bins {bins[0].tolist()}")
    print(f"  max error inside the 1-99% range {error:.4f} (half a bin: {half_bin:.4f})")

    state_normalizer = StateNormalizer().fit(torch.randn(100, 9))
    builder = SequenceBuilder(
        text_tokenizer,
        image_tokenizer=image_tokenizer,
        action_tokenizer=action_tokenizer,
        state_normalizer=state_normalizer,
    )
    sample = builder.vla_sample([image], torch.randn(9), sentence, trajectory[:4])
    batch = builder.build([sample, builder.text_sample("The robot is done.")], 160)
    print(f"batch  VLA sample + text sample packed into one row of {batch.input_ids.shape[1]}")
    print(f"  shared vocab {builder.vocab_size} (actions at {builder.action_offset})")
    print(f"  layout {_runs(batch.modality[0].tolist())}")
    print(
        f"  {int(batch.prefix.sum())} prefix positions, {int(batch.loss_mask.sum())} loss positions"
    )
    print("  features " + ", ".join(_summary(k, v) for k, v in batch.features.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmmm.demo", description=__doc__)
    parser.add_argument("--sentence", default=DEFAULT_SENTENCE)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run_main(lambda: run_demo(args.sentence, args.image_size, args.patch_size, args.seed))


if __name__ == "__main__":
    sys.exit(main())
