"""The loaders: the training set's batches, seeded per sample so that they do not depend on
the workers, and the evaluation splits' batches of images of every size.

    from loaders import training_loader, epoch_batches, eval_loader
    loader = training_loader(train_set, batch_size=16, num_workers=4, seed=0)
    for images, masks in epoch_batches(loader, seed=0, epoch=1): ...

Workers are started once per run (persistent): under spawn (Windows, macOS) each start costs a
fresh interpreter and torch's import. They leave Ctrl+C, `kill` and a closed terminal to their
script (cli.quiet_worker).
"""

from cli import quiet_worker

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dataset import EvalTransform, voc_dataset


class EpochSampler(DistributedSampler):
    """The training order, one shuffle per epoch drawn from (seed, epoch) alone, each index
    yielded with its epoch: (epoch, index), which SeededSamples reads. Under torchrun
    (world > 1) each process takes its share; alone, all of it."""

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world: int = 1):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)

    def __iter__(self):
        return ((self.epoch, index) for index in super().__iter__())


class SeededSamples(Dataset):
    """dataset[index] with every random draw of its transforms (the crop, the scale, the flip)
    seeded from (seed, epoch, index) alone, for an (epoch, index) key of EpochSampler: an
    epoch's crops are the same in whichever worker, or in none, under fork or spawn, in a
    resumed run or an uninterrupted one. The caller's random state is left as it was."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple):
        epoch, index = key
        state = np.random.SeedSequence((self.seed, epoch, index)).generate_state(1, np.uint64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(state[0]))
            return self.dataset[index]


def training_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    shard: tuple = (0, 1),
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled batches of the dataset's samples, seeded per sample (SeededSamples), each
    epoch's taken with epoch_batches; shard=(rank, world size) under torchrun. Its workers
    start once per run and ignore the stop signals (the module's docstring says why)."""
    rank, world = shard
    return DataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=EpochSampler(dataset, seed, rank, world),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=quiet_worker,
    )


def epoch_batches(loader: DataLoader, seed: int, epoch: int, rank: int = 0, world: int = 1):
    """The epoch's batches, which a resumed run sees exactly as an uninterrupted one does: the
    shuffle and every crop from the seed and the epoch alone (EpochSampler,
    SeededSamples), whatever the workers; then the dropout from the seed, the epoch and the
    process: process `rank` of `world` in epoch e draws from seed + e * world + rank."""
    loader.sampler.set_epoch(epoch)
    batches = iter(loader)  # it draws from the random state: before the dropout is seeded
    torch.manual_seed(seed + epoch * world + rank)
    return batches


def eval_loader(
    data_root: str | Path,
    split: str,
    batch_size: int = 1,
    num_workers: int = 0,
    resize: int | None = None,
    limit: int | None = None,
    shard: tuple = (0, 1),
    pin_memory: bool = False,
) -> DataLoader:
    """Loader of a VOC split for metrics.evaluate. shard=(rank, world size) keeps every
    world-th image from the rank-th: disjoint shares that together are the split, each image
    once (DistributedSampler would pad the shares with repeats, which would bias the mIoU).
    pin_memory: for a CUDA device, where it speeds up the copies."""
    dataset = voc_dataset(data_root, split, EvalTransform(resize), limit)
    rank, world = shard
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(rank, len(dataset), world),
        num_workers=num_workers,
        collate_fn=collate_eval,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,  # train.py validates every epoch with this loader
        worker_init_fn=quiet_worker,
    )


def collate_eval(batch: list) -> tuple:
    """Batch images of different sizes for evaluation.

    Returns (images N x 3 x H x W, zero-padded at the bottom and right to the largest image,
    masks as a list at their original sizes, [(h, w)] of each image before padding). Zero is
    the mean colour after normalisation. evaluate() crops the padding off the logits, so padded
    pixels never reach the metric, but they can still shift predictions near the bottom/right
    edge through the receptive field: published numbers use batch size 1.
    """
    sizes = [tuple(image.shape[-2:]) for image, _ in batch]
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = torch.zeros(len(batch), 3, h, w)
    for i, (image, _) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
    return images, [torch.as_tensor(mask) for _, mask in batch], sizes
