"""PASS (multi-device): a 2-rank all-gather through window buffers: each rank puts its row
into row `rank` of every rank's window, a notify/wait barrier, then each copies the window
out; a HOST program dispatches one chip program per rank."""
import pypto.language as pl
import pypto.language.distributed as pld

N_RANKS, N = 2, 64


@pl.jit.incore
def gather_step(
    x: pl.Tensor[[1, N], pl.FP32],
    y: pl.Out[pl.Tensor[[N_RANKS, N], pl.FP32]],
    win: pld.DistributedTensor[[N_RANKS, N], pl.FP32],
    sig: pld.DistributedTensor[[N_RANKS, 1], pl.INT32],
    me: pl.Scalar[pl.INT32],
):
    for peer in pl.range(N_RANKS):
        pld.tensor.put(win, peer, x, [me, 0], [0, 0], [1, N])
    for peer in pl.range(N_RANKS):
        if peer != me:
            pld.system.notify(sig, peer=peer, offsets=[me, 0], value=1,
                              op=pld.NotifyOp.AtomicAdd)
    for src in pl.range(N_RANKS):
        if src != me:
            pld.system.wait(signal=sig, offsets=[src, 0], expected=1, cmp=pld.WaitCmp.Ge)
    rows = pl.load(win, [0, 0], [N_RANKS, N])
    return pl.store(rows, [0, 0], y)


@pl.jit
def gather(
    x: pl.Tensor[[1, N], pl.FP32],
    y: pl.Out[pl.Tensor[[N_RANKS, N], pl.FP32]],
    win: pld.DistributedTensor[[N_RANKS, N], pl.FP32],
    sig: pld.DistributedTensor[[N_RANKS, 1], pl.INT32],
    me: pl.Scalar[pl.INT32],
):
    return gather_step(x, y, win, sig, me)


@pl.jit.host
def l3_gather(
    x: pl.Tensor[[N_RANKS, 1, N], pl.FP32],
    y: pl.Out[pl.Tensor[[N_RANKS, N_RANKS, N], pl.FP32]],
):
    win_buf = pld.alloc_window_buffer([N_RANKS, N], dtype=pl.FP32)
    sig_buf = pld.alloc_window_buffer(N_RANKS * 4)
    for r in pl.range(pld.world_size()):
        win = pld.window(win_buf, [N_RANKS, N], dtype=pl.FP32)
        sig = pld.window(sig_buf, [N_RANKS, 1], dtype=pl.INT32)
        gather(x[r], y[r], win, sig, r, device=r)


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [N_RANKS, 1, N], torch.float32, init_value=torch.randn),
            TensorSpec("y", [N_RANKS, N_RANKS, N], torch.float32, is_output=True)]


def golden_gather(tensors):
    tensors["y"][:] = tensors["x"].reshape(1, N_RANKS, N)


if __name__ == "__main__":
    from golden import run_jit
    from pypto.ir.distributed_compiled_program import DistributedConfig

    run_jit(fn=l3_gather, specs=build_tensor_specs(), golden_fn=golden_gather,
            compile_cfg=dict(distributed_config=DistributedConfig(device_ids=[0, 1],
                                                                  num_sub_workers=0)),
            rtol=0, atol=0)
