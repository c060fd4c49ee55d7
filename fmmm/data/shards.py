"""Shard readers and writers: webdataset-style tar (image/audio/video + text) and JSONL text.

A sample is a plain dict, the same for every format:

    {"key": str, "modality": "text" | "image" | "audio" | "video",
     "text": str | None,                      # caption or document
     "image" | "audio" | "video": bytes | None, # encoded payload, as stored
     "ext": {"image": "jpg", ...},            # file extension of each payload
     "json": dict | None,                     # `<key>.json` member, or the whole JSONL record
     "source": str, "position": int}          # shard file and where the sample starts in it

`position` is the byte offset of the sample's first tar member, or the 1-based line number in a
JSONL file. Readers stream (one sample in memory at a time) and report bad data as `ShardError`
naming the file and position: `iter_samples(path, on_error=errors.append)` records the error,
skips the bad sample (or the rest of a truncated tar) and goes on. Bad data includes a JSONL line
longer than `MAX_LINE_BYTES`, a tar member larger than `MAX_MEMBER_BYTES` and a member name that
is not a safe relative path (absolute, `..`, empty parts): readers never hold more than one
bounded record in memory, and an unsafe name never reaches a written shard.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import tempfile
import wave
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
AUDIO_EXTS = ("wav", "flac", "mp3", "ogg")
VIDEO_EXTS = ("mp4", "webm", "avi", "npy")
TEXT_EXTS = ("txt", "text", "caption")
SHARD_SUFFIXES = (".tar", ".jsonl")
PAYLOADS = ("image", "audio", "video")
# Record bounds: a text record this long is already ~1M tokens, far past any context; a member this
# large is a long video. Past them a reader reports the record instead of loading it.
MAX_LINE_BYTES = 8 * 2**20
MAX_MEMBER_BYTES = 256 * 2**20
_KEY_PATTERN = re.compile(r"^[^.\s][^.]*$")  # a webdataset key: no dots, no leading space

Sample = dict[str, Any]


class ShardError(ValueError):
    """Bad data in a shard; `source` and `position` say where."""

    def __init__(self, source: str | os.PathLike, position: int, message: str):
        self.source = str(source)
        self.position = int(position)
        self.message = message
        super().__init__(f"{self.source}:{self.position}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "position": self.position, "error": self.message}


def list_shards(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Resolve folders (searched recursively), globs and files to a sorted list of shard paths.

    Hidden files and folders and robot dataset folders inside a searched folder are skipped.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    found: set[Path] = set()
    for item in inputs:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            candidates = _walk_shards(path)
        elif path.is_file():
            candidates = [path]
        else:
            candidates = [Path(p) for p in glob.glob(item, recursive=True)]
            if not candidates:
                raise ValueError(f"no such file, folder or glob match: {item}")
        for candidate in candidates:
            if candidate.suffix not in SHARD_SUFFIXES:
                raise ValueError(f"{candidate}: not a shard (expected {', '.join(SHARD_SUFFIXES)})")
            if candidate.is_file() and not candidate.name.startswith("."):
                found.add(candidate)
    if not found:
        raise ValueError(f"no .tar or .jsonl shards found in {', '.join(map(str, inputs))}")
    return sorted(found)


def _walk_shards(folder: Path) -> list[Path]:
    # Hidden folders (work files) and robot dataset folders (meta/info.json) are not shards.
    found = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".")
            and not (Path(parent) / name / "meta" / "info.json").is_file()
        ]
        found += [Path(parent) / name for name in files if Path(name).suffix in SHARD_SUFFIXES]
    return found


def iter_samples(
    path: str | os.PathLike, on_error: Callable[[ShardError], None] | None = None
) -> Iterator[Sample]:
    """Yield the samples of one shard in file order; bad data raises, or goes to `on_error`."""
    path = Path(path)
    if path.suffix == ".tar":
        yield from _iter_tar(path, on_error)
    elif path.suffix == ".jsonl":
        yield from _iter_jsonl(path, on_error)
    else:
        raise ValueError(f"{path}: unknown shard format (expected .tar or .jsonl)")


def report_error(error: ShardError, on_error: Callable[[ShardError], None] | None) -> None:
    """Hand `error` to `on_error`, or raise it when there is none."""
    if on_error is None:
        raise error
    on_error(error)


def _read_line(f: io.BufferedReader, path: Path, line_number: int) -> bytes:
    """The next line of `f` (b"" at the end); a line past `MAX_LINE_BYTES` is skipped to its end
    and raises `ShardError`, so a huge record costs no more memory than the bound."""
    raw = f.readline(MAX_LINE_BYTES + 1)
    if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
        return raw
    size = len(raw)
    while raw and not raw.endswith(b"\n"):
        raw = f.readline(2**20)
        size += len(raw)
    raise ShardError(
        path, line_number, f"line of {size} bytes is longer than the limit of {MAX_LINE_BYTES}"
    )


def _iter_jsonl(path: Path, on_error: Callable[[ShardError], None] | None) -> Iterator[Sample]:
    with open(path, "rb") as f:
        line_number = 0
        while True:
            line_number += 1
            try:
                raw = _read_line(f, path, line_number)
            except ShardError as error:
                report_error(error, on_error)
                continue
            if not raw:
                break
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                report_error(ShardError(path, line_number, f"invalid JSON line: {exc}"), on_error)
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                report_error(
                    ShardError(path, line_number, 'line has no string "text" field'), on_error
                )
                continue
            yield text_sample(
                record, path, line_number, record.get("id", f"{path.stem}:{line_number}")
            )


def text_sample(record: dict[str, Any], path: Path, position: int, key: Any) -> Sample:
    """The sample dict of one JSONL record (`record["text"]` holds the text)."""
    return make_sample(str(key), record["text"], json_meta=record, source=path, position=position)


def unsafe_member_name(name: str) -> str | None:
    """Why a tar member name is not a safe relative path (None when it is): absolute names,
    `..` or `.` parts, empty parts, backslashes and control characters could escape or confuse
    the folder a shard is unpacked into."""
    name = _relative(name)
    if not name:
        return "empty name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "backslash or control character"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "'.', '..' or empty path part"
    key, _ = _split_member_name(name)
    if not _KEY_PATTERN.match(key):
        return f"sample key {key!r} is empty, starts with a space or holds a '.'"
    return None


def _relative(name: str) -> str:
    # `tar -C folder .` writes members as ./name: the same name
    while name.startswith("./"):
        name = name[2:]
    return name


def _split_member_name(name: str) -> tuple[str, str]:
    # webdataset convention: the key is everything before the first dot of the basename.
    folder, _, base = _relative(name).rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _sample_from_members(key: str, members: dict[str, bytes], path: Path, position: int) -> Sample:
    sample = make_sample(key, source=path, position=position)
    for ext, data in members.items():
        if ext in TEXT_EXTS:
            try:
                sample["text"] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ShardError(path, position, f"{key}.{ext} is not UTF-8: {exc}") from None
        elif ext == "json":
            try:
                sample["json"] = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ShardError(path, position, f"{key}.json is invalid JSON: {exc}") from None
        else:
            for payload, exts in (
                ("image", IMAGE_EXTS),
                ("audio", AUDIO_EXTS),
                ("video", VIDEO_EXTS),
            ):
                if ext in exts:
                    sample[payload] = data
                    sample["ext"][payload] = ext
    for payload in ("video", "audio", "image"):
        if sample[payload] is not None:
            sample["modality"] = payload
    if sample["modality"] == "text" and sample["text"] is None:
        raise ShardError(path, position, f"sample {key!r} has neither text nor a known payload")
    return sample


def _iter_tar(path: Path, on_error: Callable[[ShardError], None] | None) -> Iterator[Sample]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except tarfile.TarError as exc:
            report_error(ShardError(path, 0, f"not a readable tar: {exc}"), on_error)
            return
        key, members, position = None, {}, 0
        bad: ShardError | None = None  # the current sample's first bad member, if any
        while True:
            offset = tar.offset
            try:
                info = tar.next()
                if info is None:
                    break
                problem = _member_problem(info)
                data = None
                if info.isfile() and problem is None:
                    data = tar.extractfile(info).read()
            except (tarfile.TarError, EOFError, OSError) as exc:
                report_error(ShardError(path, offset, f"truncated or corrupt tar: {exc}"), on_error)
                return
            # Keep the member list from growing with the shard: we never look back.
            tar.members.clear()
            if data is None and problem is None:
                continue
            member_key, ext = _split_member_name(info.name)
            if member_key != key:
                if key is not None:
                    yield from _emit(key, members, path, position, on_error, bad)
                key, members, position, bad = member_key, {}, info.offset, None
            if problem is not None:
                bad = bad or ShardError(path, info.offset, f"member {info.name!r}: {problem}")
            else:
                members[ext] = data
        # tarfile stops silently at a cut header; a complete tar ends with a zero block.
        f.seek(tar.offset)
        end = f.read(tarfile.BLOCKSIZE)
        complete = len(end) == tarfile.BLOCKSIZE and not end.strip(b"\0")
        if key is not None and complete:
            yield from _emit(key, members, path, position, on_error, bad)
        if not complete:
            where = position if key is not None else min(tar.offset, size)
            report_error(
                ShardError(path, where, "truncated tar: no end-of-archive block"), on_error
            )


def _member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a file member cannot be read into a sample (None when it can or is no file)."""
    if not info.isfile():
        return None
    unsafe = unsafe_member_name(info.name)
    if unsafe is not None:
        return f"unsafe or invalid name: {unsafe}"
    if info.size > MAX_MEMBER_BYTES:
        return f"{info.size} bytes is larger than the limit of {MAX_MEMBER_BYTES}"
    return None


def _emit(
    key: str,
    members: dict[str, bytes],
    path: Path,
    position: int,
    on_error: Callable | None,
    bad: ShardError | None = None,
) -> Iterator[Sample]:
    # a sample with one bad member is skipped whole: its other members alone would be a different,
    # silently incomplete sample
    if bad is not None:
        report_error(bad, on_error)
        return
    try:
        yield _sample_from_members(key, members, path, position)
    except ShardError as error:
        report_error(error, on_error)


class ShardDataset:
    """Random access to the samples of tar and JSONL shards: `dataset[i]` reads only sample i.

    One pass with `iter_samples` records where each valid sample starts (a byte offset), so a
    mixture can read samples from shards in any order. `inputs` is what `list_shards` takes.
    """

    def __init__(self, inputs: str | os.PathLike | Iterable[str | os.PathLike]):
        self.paths = list_shards(inputs)
        self.entries: list[tuple[int, int]] = []  # (shard index, byte offset)
        for shard, path in enumerate(self.paths):
            line_offsets = _line_offsets(path) if path.suffix == ".jsonl" else None
            for sample in iter_samples(path):
                position = sample["position"]
                offset = line_offsets[position - 1] if line_offsets is not None else position
                self.entries.append((shard, offset))
        if not self.entries:
            raise ValueError(f"no samples in {', '.join(map(str, self.paths))}")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        shard, offset = self.entries[index]
        path = self.paths[shard]
        with open(path, "rb") as f:
            f.seek(offset)
            if path.suffix == ".jsonl":
                record = json.loads(f.readline(MAX_LINE_BYTES + 1))
                return text_sample(record, path, offset, record.get("id", f"{path.stem}:{index}"))
            return _read_tar_sample(f, path, offset)


def _line_offsets(path: Path) -> list[int]:
    offsets, position = [], 0
    with open(path, "rb") as f:
        for line in f:
            offsets.append(position)
            position += len(line)
    return offsets


def _read_tar_sample(f: io.BufferedReader, path: Path, offset: int) -> Sample:
    tar = tarfile.open(fileobj=f, mode="r:")
    key, members = None, {}
    for info in tar:
        if not info.isfile() or _member_problem(info) is not None:
            continue
        member_key, ext = _split_member_name(info.name)
        if key is not None and member_key != key:
            break
        key = member_key
        members[ext] = tar.extractfile(info).read()
    if key is None:
        raise ValueError(f"{path}:{offset}: no sample at this offset")
    return _sample_from_members(key, members, path, offset)


def decode_image(sample: Sample) -> np.ndarray:
    """Decode the sample's image to uint8 (H, W, 3) RGB; a bad image raises `ShardError`."""
    from PIL import Image

    if sample.get("image") is None:
        raise ValueError(f"sample {sample.get('key')!r} has no image")
    try:
        with Image.open(io.BytesIO(sample["image"])) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ShardError(
            sample["source"], sample["position"], f"undecodable image {sample['key']!r}: {exc}"
        ) from None


def decode_video(sample: Sample) -> np.ndarray:
    """Decode the sample's video to uint8 (T, H, W, 3) frames; bad data raises `ShardError`."""
    if sample.get("video") is None:
        raise ValueError(f"sample {sample.get('key')!r} has no video")
    try:
        if sample["ext"]["video"] == "npy":
            frames = np.load(io.BytesIO(sample["video"]), allow_pickle=False)
        else:
            import imageio.v3 as iio

            frames = iio.imread(sample["video"], extension=f".{sample['ext']['video']}")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}"
            )
        return frames
    except Exception as exc:
        raise ShardError(
            sample["source"], sample["position"], f"undecodable video {sample['key']!r}: {exc}"
        ) from None


def decode_audio(sample: Sample) -> tuple[np.ndarray, int]:
    """Decode the sample's audio to float32 (C, N) in [-1, 1] and its sample rate.

    PCM WAV is read with the standard library (channels kept); other formats (flac, mp3, ogg)
    through the ffmpeg binary that imageio-ffmpeg ships, downmixed to mono. Bad data raises.
    """
    if sample.get("audio") is None:
        raise ValueError(f"sample {sample.get('key')!r} has no audio")
    try:
        if sample["ext"]["audio"] == "wav":
            try:
                return _read_wav(sample["audio"])
            except wave.Error:
                pass  # not integer PCM (e.g. float WAV): ffmpeg reads it
        return _ffmpeg_audio(sample["audio"])
    except Exception as exc:
        raise ShardError(
            sample["source"], sample["position"], f"undecodable audio {sample['key']!r}: {exc}"
        ) from None


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as reader:
        channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
        raw = reader.readframes(reader.getnframes())
    if width == 1:
        values = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        bytes3 = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
        values = (np.where(ints >= 1 << 23, ints - (1 << 24), ints) / float(1 << 23)).astype(
            np.float32
        )
    elif width in (2, 4):
        dtype = "<i2" if width == 2 else "<i4"
        values = np.frombuffer(raw, dtype).astype(np.float32) / float(1 << (8 * width - 1))
    else:
        raise ValueError(f"unsupported WAV sample width {width}")
    return np.ascontiguousarray(values.reshape(-1, channels).T), rate


def _ffmpeg_audio(data: bytes) -> tuple[np.ndarray, int]:
    import subprocess

    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", "pipe:0"]
    command += ["-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "pipe:1"]
    result = subprocess.run(command, input=data, capture_output=True, check=False)
    rate = re.search(rb"Audio: .*?(\d+) Hz", result.stderr)
    if result.returncode != 0 or rate is None:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ValueError(lines[-1] if lines else "ffmpeg could not decode it")
    return np.frombuffer(result.stdout, np.float32)[None, :].copy(), int(rate.group(1))


def encode_image(image: np.ndarray, ext: str = "png") -> bytes:
    """Encode uint8 (H, W, 3) RGB as PNG or JPEG bytes (for building shards)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
        buffer, format="JPEG" if ext in ("jpg", "jpeg") else ext.upper()
    )
    return buffer.getvalue()


def encode_frames(frames: np.ndarray) -> bytes:
    """Encode uint8 (T, H, W, 3) frames as `.npy` bytes (the lossless video member)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(frames, dtype=np.uint8), allow_pickle=False)
    return buffer.getvalue()


def make_sample(
    key: str,
    text: str | None = None,
    *,
    image: bytes | None = None,
    audio: bytes | None = None,
    video: bytes | None = None,
    ext: dict[str, str] | None = None,
    json_meta: dict | None = None,
    source: str | os.PathLike = "",
    position: int = 0,
) -> Sample:
    """Build a sample dict (payloads are encoded bytes; `ext` names their format); `source` and
    `position` say where a sample read from a shard stands."""
    ext = dict(ext or {})
    payloads = {"image": image, "audio": audio, "video": video}
    for payload, default in (("image", "png"), ("audio", "wav"), ("video", "npy")):
        if payloads[payload] is not None:
            ext.setdefault(payload, default)
    modality = next((p for p in ("video", "audio", "image") if payloads[p] is not None), "text")
    return {
        "key": key,
        "modality": modality,
        "text": text,
        "image": image,
        "audio": audio,
        "video": video,
        "ext": ext,
        "json": json_meta,
        "source": str(source),
        "position": position,
    }


class ShardWriter:
    """Write samples into rolling shards of `samples_per_shard` each, every shard atomically.

    `fmt` is "tar" (webdataset members `<key>.<ext>`, `<key>.txt`, `<key>.json`) or "jsonl"
    (text only: the sample's JSON record with "id" and "text"). Shards are named
    `<prefix>-000000.<fmt>`; each appears under its final name only when complete.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        fmt: str = "tar",
        samples_per_shard: int = 1000,
        prefix: str = "shard",
    ):
        if fmt not in ("tar", "jsonl"):
            raise ValueError(f"shard format must be 'tar' or 'jsonl', got {fmt!r}")
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.folder = Path(folder)
        self.fmt = fmt
        self.samples_per_shard = samples_per_shard
        self.prefix = prefix
        self.paths: list[Path] = []
        self._count = 0
        self._file = None
        self._tar = None
        self._tmp: str | None = None
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, sample: Sample) -> None:
        """Append one sample, starting a new shard when the current one is full."""
        if self._file is None:
            self._open()
        if self.fmt == "tar":
            self._write_tar(sample)
        else:
            self._write_jsonl(sample)
        self._count += 1
        if self._count >= self.samples_per_shard:
            self._finish()

    def _open(self) -> None:
        fd, self._tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{self.prefix}.", suffix=".tmp")
        self._file = os.fdopen(fd, "wb")
        if self.fmt == "tar":
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def _write_tar(self, sample: Sample) -> None:
        key = str(sample["key"])
        if not _KEY_PATTERN.match(key):
            raise ValueError(f"tar sample key {key!r} must be non-empty and contain no '.'")
        members: list[tuple[str, bytes]] = []
        if sample.get("text") is not None:
            members.append(("txt", sample["text"].encode("utf-8")))
        for payload in PAYLOADS:
            if sample.get(payload) is not None:
                members.append((sample["ext"][payload], sample[payload]))
        if sample.get("json") is not None:
            members.append(("json", json.dumps(sample["json"], sort_keys=True).encode("utf-8")))
        if not members:
            raise ValueError(f"sample {key!r} has nothing to write")
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0  # same samples, same bytes
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(data))

    def _write_jsonl(self, sample: Sample) -> None:
        if sample.get("text") is None or any(sample.get(p) is not None for p in PAYLOADS):
            raise ValueError(f"sample {sample.get('key')!r}: JSONL shards hold text-only samples")
        record = dict(sample.get("json") or {})
        record["id"] = sample["key"]
        record["text"] = sample["text"]
        self._file.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        path = self.folder / f"{self.prefix}-{len(self.paths):06d}.{self.fmt}"
        os.chmod(self._tmp, 0o644)  # mkstemp makes owner-only files; shards are data to share
        os.replace(self._tmp, path)
        self._tmp = None
        self.paths.append(path)

    def close(self) -> list[Path]:
        """Finish the last (partial) shard; return every shard path written."""
        if self._file is not None:
            self._finish()
        return self.paths

    def abort(self) -> None:
        """Drop the shard in progress (completed shards stay)."""
        if self._file is not None:
            if self._tar is not None:
                self._tar.close()
                self._tar = None
            self._file.close()
            self._file = None
            os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(path: str | os.PathLike, samples: Iterable[Sample]) -> int:
    """Write `samples` to exactly one shard at `path` (.tar or .jsonl), atomically; return count."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    writer = ShardWriter(path.parent, fmt=fmt, samples_per_shard=2**62, prefix=f".{path.stem}")
    count = 0
    try:
        for sample in samples:
            writer.write(sample)
            count += 1
        if writer._file is None:
            writer._open()  # an empty shard is still a valid file
        writer._finish()
    except BaseException:
        writer.abort()
        raise
    os.replace(writer.paths[-1], path)
    return count
