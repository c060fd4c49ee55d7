"""Bad configs and numbers for every entry point that takes them, run in-process: exit 2, one line
naming the key or file, nothing written (the corpus of issue 15, part one)."""

from __future__ import annotations

import pytest

from .corpus import MODEL_DEBUG, SMOKE, case, check_case, make_bad_files

OUT = "out_dir={out}"


def train(*overrides: str, culprit, id: str):
    return case("train", SMOKE, OUT, *overrides, culprit=culprit, id=id)


def scaling(*args: str, culprit, id: str):
    return case("scaling", *args, culprit=culprit, id=id)


TRAIN_FILES = [
    case("train", "{missing}", culprit="missing.yaml", id="missing-config"),
    case("train", "{folder}", culprit="a_folder", id="config-is-folder"),
    case("train", "{garbage}", culprit="garbage.yaml", id="binary-config"),
    case("train", "{list_yaml}", culprit="list.yaml", id="yaml-list"),
    case("train", "{scalar_yaml}", culprit="scalar.yaml", id="yaml-scalar"),
    case("train", "{syntax_yaml}", culprit="syntax.yaml", id="yaml-syntax"),
    case("train", "{tabs_yaml}", culprit="tabs.yaml", id="yaml-tabs"),
    case("train", "{json_syntax}", culprit="broken.json", id="json-as-config"),
    case("train", culprit="usage", id="no-config"),
    case("train", SMOKE, "train.steps", culprit="train.steps", id="override-without-equals"),
]

TRAIN_VALUES = [
    train("train.nope=1", culprit="nope", id="unknown-key"),
    train("nope=1", culprit="nope", id="unknown-top-key"),
    train("model.backbone.widht=64", culprit="widht", id="misspelled-key"),
    train("run_dir=x", culprit="run_dir", id="renamed-key"),
    train("kind=banana", culprit="banana", id="unknown-kind"),
    train("train.steps=abc", culprit="train.steps", id="steps-not-int"),
    train("train.steps=1.5", culprit="train.steps", id="steps-float"),
    train("train.steps=0", culprit="train.steps", id="steps-zero"),
    train("train.steps=-5", culprit="train.steps", id="steps-negative"),
    train("train.batch_size=0", culprit="batch_size", id="batch-zero"),
    train("train.batch_size=-1", culprit="batch_size", id="batch-negative"),
    train("train.batch_size=100000000", culprit="batch_size", id="batch-absurd"),
    train("train.batch_size=3", "train.grad_accum=2", culprit="grad_accum", id="batch-indivisible"),
    train("train.grad_accum=0", culprit="grad_accum", id="grad-accum-zero"),
    train("train.precision=fp8", culprit="precision", id="precision-unknown"),
    train("train.distributed=mpi", culprit="distributed", id="distributed-unknown"),
    train("train.eval_every=-1", culprit="eval_every", id="eval-every-negative"),
    train("train.peak_flops=inf", culprit="peak_flops", id="peak-flops-inf"),
    train("train.peak_flops=-1", culprit="peak_flops", id="peak-flops-negative"),
    train("train.compile_buckets=0", culprit="compile_buckets", id="compile-buckets-zero"),
    train("train.optim.lr=inf", culprit="lr", id="lr-inf"),
    train("train.optim.lr=nan", culprit="lr", id="lr-nan"),
    train("train.optim.lr=-inf", culprit="lr", id="lr-minus-inf"),
    train("train.optim.lr=0", culprit="lr", id="lr-zero"),
    train("train.optim.lr=-0.1", culprit="lr", id="lr-negative"),
    train("train.optim.lr=fast", culprit="lr", id="lr-not-number"),
    train("train.optim.eps=0", culprit="eps", id="adam-eps-zero"),
    train("train.optim.betas=[0.9]", culprit="betas", id="betas-one"),
    train("train.optim.betas=[0.9,1.5]", culprit="betas", id="betas-out-of-range"),
    train("train.optim.betas=[0.9,nan]", culprit="betas", id="betas-nan"),
    train("train.optim.grad_clip=-1", culprit="grad_clip", id="grad-clip-negative"),
    train("train.optim.grad_clip=inf", culprit="grad_clip", id="grad-clip-inf"),
    train("train.optim.warmup_steps=-1", culprit="warmup_steps", id="warmup-negative"),
    train("train.optim.min_lr_ratio=2", culprit="min_lr_ratio", id="min-lr-ratio-above-one"),
    train("train.optim.weight_decay=-0.1", culprit="weight_decay", id="weight-decay-negative"),
    train("model.backbone.n_layers=100000000", culprit="n_layers", id="layers-absurd"),
    train("model.backbone.n_layers=0", culprit="n_layers", id="layers-zero"),
    train("model.backbone.n_layers=-2", culprit="n_layers", id="layers-negative"),
    train("model.backbone.dim=0", culprit="dim", id="dim-zero"),
    train("model.backbone.dim=-64", culprit="dim", id="dim-negative"),
    train("model.backbone.dim=10000000", culprit="dim", id="dim-absurd"),
    train("model.backbone.dim=66", culprit="dim", id="dim-indivisible"),
    train("model.backbone.n_heads=0", culprit="n_heads", id="heads-zero"),
    train("model.backbone.n_kv_heads=3", culprit="n_kv_heads", id="kv-heads-indivisible"),
    train("model.backbone.max_seq_len=0", culprit="max_seq_len", id="max-seq-len-zero"),
    train("model.backbone.max_seq_len=1000000000", culprit="max_seq_len", id="max-seq-absurd"),
    train("model.backbone.n_experts=1", culprit="n_experts", id="one-expert"),
    train("model.backbone.n_experts=100000", culprit="n_experts", id="experts-absurd"),
    train("model.backbone.norm_eps=inf", culprit="norm_eps", id="norm-eps-inf"),
    train("model.backbone.rope_theta=nan", culprit="rope_theta", id="rope-theta-nan"),
    train("model.backbone.rope_theta=0", culprit="rope_theta", id="rope-theta-zero"),
    train("model.backbone.ffn_hidden=0", culprit="ffn_hidden", id="ffn-zero"),
    train("model.text_vocab_size=0", culprit="text_vocab_size", id="vocab-zero"),
    train("model.text_vocab_size=1000000000", culprit="text_vocab_size", id="vocab-absurd"),
    train("model.action_bins=-1", culprit="action_bins", id="action-bins-negative"),
    train("model.image_size=30", culprit="image_size", id="image-size-not-multiple"),
    train("model.patch_size=0", culprit="patch_size", id="patch-zero"),
    train("model.z_loss_weight=nan", culprit="z_loss_weight", id="z-loss-nan"),
    train("model.z_loss_weight=-1", culprit="z_loss_weight", id="z-loss-negative"),
    train("data.context_length=0", culprit="context_length", id="context-zero"),
    train("data.context_length=100000", culprit="context_length", id="context-past-model"),
    train("data.action_chunk=0", culprit="action_chunk", id="action-chunk-zero"),
    train("data.sources=[]", culprit="sources", id="no-sources"),
    train("objectives.mask_ratio=1.5", culprit="mask_ratio", id="mask-ratio-above-one"),
    train("objectives.contrastive_kind=triplet", culprit="contrastive_kind", id="contrastive"),
    train("objectives.autoregressive=-1", culprit="autoregressive", id="objective-negative"),
    train("objectives.contrastive=inf", culprit="contrastive", id="objective-inf"),
]


def write_yaml_cases(root):
    """Config files that parse but say something that cannot be meant."""
    texts = {
        "unknown_key": "kind: pretrain\nbogus: 1\n",
        "section_list": "kind: pretrain\ntrain: [1, 2]\n",
        "section_scalar": "kind: pretrain\nmodel: 7\n",
        "lr_nan": "kind: pretrain\ntrain: {optim: {lr: .nan}}\n",
        "steps_inf": "kind: pretrain\ntrain: {steps: .inf}\n",
        "wrong_type": "kind: pretrain\ntrain: {batch_size: many}\n",
        "renamed": "kind: pretrain\nrun_dir: runs/x\n",
        "layers_absurd": "kind: pretrain\nmodel: {backbone: {n_layers: 100000000}}\n",
    }
    return {name: (root / f"{name}.yaml", text) for name, text in texts.items()}


YAML_CASES = [
    ("unknown_key", "bogus"),
    ("section_list", "train"),
    ("section_scalar", ("model", "section_scalar.yaml")),
    ("lr_nan", "lr"),
    ("steps_inf", "steps"),
    ("wrong_type", "batch_size"),
    ("renamed", "run_dir"),
    ("layers_absurd", "n_layers"),
]

SCALING = [
    scaling("{missing}", culprit="missing.yaml", id="missing-config"),
    scaling("{folder}", culprit="a_folder", id="config-is-folder"),
    scaling("{garbage}", culprit="garbage.yaml", id="binary-config"),
    scaling("{list_yaml}", culprit="list.yaml", id="yaml-list"),
    scaling("{scalar_yaml}", culprit="scalar.yaml", id="yaml-scalar"),
    scaling("{syntax_yaml}", culprit="syntax.yaml", id="yaml-syntax"),
    scaling(MODEL_DEBUG, "backbone.n_layers=100000000", culprit="n_layers", id="layers-absurd"),
    scaling(MODEL_DEBUG, "backbone.n_layers=0", culprit="n_layers", id="layers-zero"),
    scaling(MODEL_DEBUG, "backbone.dim=0", culprit="dim", id="dim-zero"),
    scaling(MODEL_DEBUG, "backbone.dim=abc", culprit="dim", id="dim-not-int"),
    scaling(MODEL_DEBUG, "backbone.n_heads=3", culprit="n_heads", id="heads-indivisible"),
    scaling(MODEL_DEBUG, "backbone.max_seq_len=-1", culprit="max_seq_len", id="max-seq-negative"),
    scaling(MODEL_DEBUG, "backbone.rope_theta=inf", culprit="rope_theta", id="rope-inf"),
    scaling(MODEL_DEBUG, "text_vocab_size=-1", culprit="text_vocab_size", id="vocab-negative"),
    scaling(MODEL_DEBUG, "z_loss_weight=nan", culprit="z_loss_weight", id="z-loss-nan"),
    scaling(MODEL_DEBUG, "bogus=1", culprit="bogus", id="unknown-key"),
    scaling(MODEL_DEBUG, "backbone", culprit="backbone", id="override-without-equals"),
    scaling(MODEL_DEBUG, "--preset", "llama2-7b", culprit="preset", id="config-and-preset"),
    scaling("--preset", "llama2-7b", "--seq-len", "0", culprit="--seq-len", id="seq-len-zero"),
    scaling("--preset", "llama2-7b", "--seq-len", "-8", culprit="--seq-len", id="seq-len-neg"),
    scaling(
        "--preset", "llama2-7b", "--seq-len", "99999999999", culprit="--seq-len", id="seq-huge"
    ),
    scaling("--preset", "llama2-7b", "--batch-size", "0", culprit="--batch-size", id="batch-zero"),
    scaling("--preset", "llama2-7b", "--batch-size", "-1", culprit="--batch-size", id="batch-neg"),
    scaling("--flops", "inf", culprit="--flops", id="flops-inf"),
    scaling("--flops", "nan", culprit="--flops", id="flops-nan"),
    scaling("--flops=-1e20", culprit="--flops", id="flops-negative"),
    scaling("--flops", "0", culprit="--flops", id="flops-zero"),
    scaling("--preset", "llama2-7b", "--gpus", "0", culprit="--gpus", id="gpus-zero"),
    scaling("--preset", "llama2-7b", "--gpu-memory", "0", culprit="--gpu-memory", id="gpu-mem-0"),
    scaling("--preset", "llama2-7b", "--gpu-memory", "inf", culprit="--gpu-memory", id="mem-inf"),
    scaling("--preset", "llama2-7b", "--gpu-memory", "nan", culprit="--gpu-memory", id="mem-nan"),
    scaling(MODEL_DEBUG, "--seq-len", "0", culprit="--seq-len", id="config-seq-len-zero"),
]

DEMO = [
    case("demo", "--image-size", "0", culprit="image_size", id="image-size-zero"),
    case("demo", "--image-size", "-64", culprit="image_size", id="image-size-negative"),
    case("demo", "--image-size", "60", culprit="image_size", id="image-size-not-multiple"),
    case("demo", "--patch-size", "0", culprit="patch_size", id="patch-zero"),
    case("demo", "--patch-size", "-8", culprit="patch_size", id="patch-negative"),
    case("demo", "--image-size", "4", culprit="image_size", id="image-smaller-than-patch"),
    case("demo", "--sentence", "", culprit="empty", id="empty-sentence"),
    case("demo", "--sentence", "word " * 400, culprit="context_length", id="sentence-past-context"),
]


@pytest.mark.parametrize("entry", TRAIN_FILES + TRAIN_VALUES + SCALING + DEMO)
def test_bad_config_or_number_is_one_line_naming_it(entry, tmp_path):
    files = make_bad_files(tmp_path)
    check_case(entry, files, tmp_path)


@pytest.mark.parametrize("name,culprit", YAML_CASES, ids=[name for name, _ in YAML_CASES])
def test_bad_config_file_content_is_one_line_naming_the_key(name, culprit, tmp_path):
    from .corpus import Case

    files = make_bad_files(tmp_path)
    path, text = write_yaml_cases(tmp_path)[name]
    path.write_text(text)
    check_case(Case("train", (str(path), "out_dir={out}"), culprit), files, tmp_path)
