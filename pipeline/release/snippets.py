"""The code the dataset cards print: every block runs as printed (tests/test_card_snippets.py).

Each block loads from one place: the Hub repository at this release's tag, or a local copy of the release in
the directory ``{name}-{version}`` (where the Hub block's download puts it). Nothing in a block is left for
the reader to fill in. The repository id comes from the validated config (ORG/NAME of letters, digits, `._-`), so it
can be quoted into Python source as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ReleaseConfig
from pipeline.release.layout import WDS_DIR

WDS_TAG_SUFFIX = "-webdataset"  # the tag `mll23 publish` gives the wds/ folder's own branch (pipeline/lifecycle/publish/plan.py)
MAX_WORKERS = 8


@dataclass(frozen=True)
class Source:
    """Where a block loads from: ``repo`` at ``revision`` on the Hub, or the local directory ``path``."""

    path: str  # a repository id or a directory
    revision: str | None = None

    @property
    def on_hub(self) -> bool:
        return self.revision is not None

    def load(self, *positional: str, **keywords: str) -> str:
        """A `load_dataset(...)` call: the path, then ``positional`` (e.g. a config name), then keywords."""
        args = [_q(self.path), *map(_q, positional)]
        if self.revision is not None:
            args.append(f"revision={_q(self.revision)}")
        args += [f"{k}={v}" for k, v in keywords.items()]
        return f"load_dataset({', '.join(args)})"


def _q(text: str) -> str:
    return '"' + text + '"'


def local_dir(config: ReleaseConfig) -> str:
    return f"{config.name}-{config.version}"


def hub_source(config: ReleaseConfig, suffix: str = "") -> Source | None:
    return Source(config.repo_id, f"v{config.version}{suffix}") if config.repo_id else None


def download_block(config: ReleaseConfig) -> str:
    """A local copy of the whole release from the Hub, in the directory the local blocks read."""
    return f"""from huggingface_hub import snapshot_download

snapshot_download({_q(config.repo_id)}, repo_type="dataset", revision={_q(f"v{config.version}")}, local_dir={_q(local_dir(config))})"""


def datasets_block(source: Source, split: str, *, sample: bool, tars: bool = False) -> str:
    """`datasets`: the whole release, its `sample` config, and one split streamed. ``tars``: the WebDataset
    variant, whose columns are `png`, `cls`, `json`."""
    label, row = ("cls", "png (PIL image), cls, json") if tars else ("label", "image (PIL image), label, image_id, ...")
    lines = [
        "from datasets import load_dataset",
        "",
        f"ds = {source.load()}",
        f'names = ds[{_q(split)}].features[{_q(label)}].names  # class i is names[i], in the config\'s order',
    ]
    if sample:
        lines.append(f"sample = {source.load('sample')}  # a small stratified sample of every split")
    lines.append(f"stream = {source.load(split=_q(split), streaming='True')}  # read as it downloads")
    lines.append(f"first = next(iter(stream))  # a dict: {row}")
    return "\n".join(lines)


def torch_parquet_block(source: Source, split: str, shards: int) -> str:
    """Map-style and streaming `datasets` through PyTorch's DataLoader."""
    workers = min(MAX_WORKERS, shards)
    return f"""from datasets import load_dataset
from torch.utils.data import DataLoader

data = {source.load(split=_q(split))}.select_columns(["image", "label"]).with_format("torch")
loader = DataLoader(data, batch_size=64, shuffle=True, num_workers={workers})
images, labels = next(iter(loader))  # uint8 (batch, 3, H, W), int64 (batch,)

stream = {source.load(split=_q(split), streaming='True')}.select_columns(["image", "label"])
stream = stream.shuffle(seed=0, buffer_size=1000).with_format("torch")
loader = DataLoader(stream, batch_size=64, num_workers={workers})  # {split} has {shards} shards: up to {shards} workers
images, labels = next(iter(loader))"""


def torch_wds_block(tar_dir_code: list[str], split: str, shards: int) -> str:
    """The webdataset library through PyTorch's DataLoader, each worker reading its own shards."""
    workers = min(MAX_WORKERS, shards)
    urls = 'f"{tar_dir}/' + f"{split}-{{{{{0:06d}..{shards - 1:06d}}}}}.tar" + '"'
    return "\n".join(
        [
            "import webdataset as wds",
            *(line for line in tar_dir_code if line.startswith(("from ", "import "))),
            "from torch.utils.data import DataLoader",
            "",
            *(line for line in tar_dir_code if not line.startswith(("from ", "import "))),
            f"urls = {urls}",
            "# workersplitter: each worker reads its own shards; with DDP use nodesplitter=wds.split_by_node",
            "tars = wds.WebDataset(urls, shardshuffle=100, nodesplitter=wds.single_node_only, workersplitter=wds.split_by_worker)",
            'tars = tars.shuffle(1000).decode("torchrgb8").to_tuple("png", "cls").batched(64)',
            f"loader = DataLoader(tars, batch_size=None, num_workers={workers})  # {split} has {shards} shards: up to {shards} workers",
            "images, labels = next(iter(loader))  # uint8 (batch, 3, H, W), int64 (batch,)",
        ]
    )


def tar_dir_code(source: Source, split: str, *, in_subfolder: bool) -> list[str]:
    """Lines that set ``tar_dir`` to a local folder of ``split``'s tars: downloaded from the Hub (that split's
    shards only) or the local copy's folder. ``in_subfolder``: the tars are in the source's wds/ folder (the
    main branch, a release directory), not at its root (the webdataset branch)."""
    if not source.on_hub:
        return [f"tar_dir = {_q(source.path + '/' + WDS_DIR if in_subfolder else source.path)}"]
    pattern = f"{WDS_DIR}/{split}-*.tar" if in_subfolder else f"{split}-*.tar"
    folder = f' + "/{WDS_DIR}"' if in_subfolder else ""
    return [
        "from huggingface_hub import snapshot_download",
        f'tar_dir = snapshot_download({_q(source.path)}, repo_type="dataset", revision={_q(source.revision)}, allow_patterns=[{_q(pattern)}]){folder}',
    ]


def croissant_block(directory: str) -> str:
    return f"""import mlcroissant as mlc

records = mlc.Dataset(jsonld={_q(directory + "/croissant.json")}).records("images")
first = next(iter(records))  # images/image (PIL), images/label, images/split, ..."""


def fence(code: str) -> str:
    return f"```python\n{code}\n```"
