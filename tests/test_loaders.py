"""loaders.py: the training batches seeded per sample (the same with workers or without, in
each process's share), the evaluation splits in order and sharded."""

import numpy as np
import pytest
import torch

import loaders
from conftest import run_python
from dataset import image_path, voc_dataset
from loaders import eval_loader
from voc import VOC


def read_ids(root, split: str) -> list:
    path = root / VOC.subdir / f"ImageSets/Segmentation/{split}.txt"
    return path.read_text(encoding="utf-8").split()


def test_the_eval_loader_gives_the_split_in_its_order_and_shards_it_disjointly(fake_voc):
    """The panels pair the i-th score with the i-th image: no shuffle. Under torchrun the
    shares are disjoint and together the split, each image once."""
    split = voc_dataset(fake_voc, "val", None)
    ordered = [image_path(split, i).stem for i in range(len(split))]
    assert ordered == read_ids(fake_voc, "val")

    def masks(loader) -> list:
        return [mask for _, batch, _ in loader for mask in batch]

    whole = masks(eval_loader(fake_voc, "val"))
    assert all(torch.equal(m, torch.as_tensor(np.array(split[i][1]))) for i, m in enumerate(whole))
    shares = [masks(eval_loader(fake_voc, "val", shard=(rank, 2))) for rank in range(2)]
    assert [len(s) for s in shares] == [2, 2]
    assert all(torch.equal(a, b) for a, b in zip(shares[0] + shares[1], whole[0::2] + whole[1::2]))


class Draws(torch.utils.data.Dataset):
    """Sample i is (i, a number drawn from torch's random state, as an augmentation draws)."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> tuple:
        return torch.tensor(index), torch.rand(())


def epochs_of(loader, epochs=(1, 2)) -> list:
    """[(indices, draws)] of each epoch, with the sampler's epoch set as train.py sets it."""
    seen = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        seen.append((torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])))
    return seen


def test_under_torchrun_each_process_trains_on_its_own_share():
    shares = [loaders.training_loader(Draws(), 1, 0, seed=0, shard=(r, 2)) for r in range(2)]
    indices = [epochs_of(loader, [1])[0][0].tolist() for loader in shares]
    assert len(indices[0]) == len(indices[1]) == 3 and sorted(sum(indices, [])) == list(range(6))


def test_an_epochs_samples_depend_on_the_seed_and_epoch_alone_not_on_the_workers():
    """The same shuffle and the same draws with 0 or 2 worker processes, started once for the
    run (persistent); another epoch, another shuffle and other draws; the caller's random
    state untouched by what the samples draw."""
    runs = []
    for workers in (0, 2):
        loader = loaders.training_loader(Draws(), 2, workers, seed=5)
        torch.manual_seed(0)
        runs.append(epochs_of(loader))
        if workers:
            assert loader.persistent_workers and loader.worker_init_fn is not None
    (first, second), (first_w, second_w) = runs
    assert all(torch.equal(a, b) for a, b in zip(first + second, first_w + second_w))
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])
    after = []
    for samples in (Draws(), NoDraws()):
        torch.manual_seed(0)
        epochs_of(loaders.training_loader(samples, 2, 0, seed=5))
        after.append(torch.rand(()))
    assert after[0] == after[1]


class NoDraws(Draws):
    def __getitem__(self, index: int) -> tuple:
        return torch.tensor(index), torch.zeros(())


UNDER_SPAWN = """
import multiprocessing, os, sys
import torch
multiprocessing.set_start_method("spawn", force=True)  # as on Windows and macOS
starts, start = [], multiprocessing.process.BaseProcess.start
multiprocessing.process.BaseProcess.start = lambda self: starts.append(1) or start(self)
from dataset import train_transforms, voc_dataset
from loaders import training_loader

crops = voc_dataset(sys.argv[1], "train", train_transforms(32))
batches = {}
for workers in (0, 1):
    loader = training_loader(crops, 2, workers, seed=3)
    for epoch in (1, 2, 3):
        loader.sampler.set_epoch(epoch)
        batches[workers, epoch] = [images for images, _ in loader]
same = all(torch.equal(a, b) for e in (1, 2, 3) for a, b in zip(batches[0, e], batches[1, e]))
print(len(starts), same, not torch.equal(batches[0, 1][0], batches[0, 2][0]))
"""


@pytest.mark.slow
def test_under_spawn_a_worker_starts_once_per_run_and_gives_the_crops_of_no_worker(fake_voc):
    """Windows and macOS start workers with spawn: a fresh interpreter and torch's import each,
    once for the run, not once per epoch; three epochs of crops read by a worker are those
    read without one, and each epoch's differ."""
    proc = run_python("-c", UNDER_SPAWN, fake_voc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "True", "True"]
