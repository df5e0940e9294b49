"""Two gloo processes with batch b give the loss and gradients of one process with batch 2b, teacher included."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_psdclip import PSDCLIPModel
from tests.support import micro_config, random_batch

GLOBAL_BATCH = 8
CONFIG = {"distill_alpha_max": 0.7, "distill_fraction": 0.5, "distill_seed": 3}


def teacher_of(model: PSDCLIPModel, rows: slice) -> dict:
    """Teacher embeddings of the global batch's `rows`, unlike the student's; pairs 1 and 6 have none."""
    generator = torch.Generator().manual_seed(1)
    dim = model.config.projection_dim
    embeds = [torch.nn.functional.normalize(torch.randn(GLOBAL_BATCH, dim, generator=generator), dim=-1)
              for _ in range(2)]
    mask = torch.ones(GLOBAL_BATCH, dtype=torch.bool)
    mask[[1, 6]] = False
    return {"teacher_image_embeds": embeds[0][rows], "teacher_text_embeds": embeds[1][rows], "teacher_mask": mask[rows]}


def loss_and_gradients(model: PSDCLIPModel, batch: dict, rows: slice) -> tuple[torch.Tensor, dict]:
    out = model(**batch, return_loss=True, training_progress=(5, 10), **teacher_of(model, rows))
    assert out.loss_soft.item() > 0
    out.loss.backward()
    return out.loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def run_rank(rank: int, world_size: int, port: int, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = PSDCLIPModel(micro_config(**CONFIG))
    local = GLOBAL_BATCH // world_size
    rows = slice(rank * local, (rank + 1) * local)
    batch = {k: v[rows] for k, v in random_batch(model.config, GLOBAL_BATCH).items()}
    loss, grads = loss_and_gradients(model, batch, rows)
    # What DDP does: average the per-process losses and gradients.
    dist.all_reduce(loss)
    for grad in grads.values():
        dist.all_reduce(grad)
    if rank == 0:
        torch.save({"loss": loss / world_size, "grads": {k: g / world_size for k, g in grads.items()}}, result_path)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    result_path = str(tmp_path / "rank0.pt")
    mp.spawn(run_rank, args=(2, free_port(), result_path), nprocs=2, join=True)
    distributed = torch.load(result_path)

    torch.manual_seed(0)
    model = PSDCLIPModel(micro_config(**CONFIG))
    loss, grads = loss_and_gradients(model, random_batch(model.config, GLOBAL_BATCH), slice(None))

    torch.testing.assert_close(distributed["loss"], loss, atol=1e-5, rtol=1e-5)
    assert distributed["grads"].keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(distributed["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)
