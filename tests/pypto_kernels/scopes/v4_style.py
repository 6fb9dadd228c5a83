"""V4-style kernel file (test input): a dynamic token dim bound with ``bind_dynamic``, the
capture form ``with pl.spmd(...) as tid`` in an inline function, a ``task_dummy`` barrier on
its task id, hand-placed runtime scopes, and split-K partial products combined with atomic
adds. ``SCOPES_BUG=plain`` drops the atomic (a race, and a wrong answer); ``SCOPES_BUG=dyn``
passes an output with one row too many (a dynamic-dim mismatch)."""

import os

import pypto.language as pl

T_DYN = pl.dynamic("T_DYN")
D = 64
K_SPLIT = 2
K_PART = D // K_SPLIT
T_TILE = 4
BUG = os.environ.get("SCOPES_BUG", "")


@pl.jit.inline(auto_scope=False)
def proj(x: pl.Tensor[[T_DYN, D], pl.FP32], w: pl.Tensor[[D, D], pl.FP32],
         y: pl.InOut[pl.Tensor[[T_DYN, D], pl.FP32]]):
    t = pl.tensor.dim(x, 0)
    with pl.scope():
        with pl.spmd((t // T_TILE) * K_SPLIT, name_hint="proj_split_k",
                     allow_early_resolve=True) as tid:
            b = pl.tile.get_block_idx()
            t0 = (b // K_SPLIT) * T_TILE
            k0 = (b % K_SPLIT) * K_PART
            acc = pl.matmul(x[t0:t0 + T_TILE, k0:k0 + K_PART], w[k0:k0 + K_PART, :],
                            out_dtype=pl.FP32)
            if BUG == "plain":
                pl.assemble(y, acc, [t0, 0])
            else:
                pl.assemble(y, acc, [t0, 0], atomic=pl.AtomicType.Add)
    return tid


@pl.jit(auto_scope=False)
def split_k_proj(x: pl.Tensor, w: pl.Tensor[[D, D], pl.FP32], y: pl.Out[pl.Tensor]):
    x.bind_dynamic(0, T_DYN)
    y.bind_dynamic(0, T_DYN)
    tid = proj(x, w, y)
    done = pl.system.task_dummy(deps=[tid, None])
    with pl.manual_scope():
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="after", deps=[done]):
            pass
    return y


def build_tensor_specs(t):
    import torch
    from golden import TensorSpec

    def small_ints(*shape):
        return lambda: torch.randint(-4, 5, shape).to(torch.float32)

    return [TensorSpec("x", [t, D], torch.float32, init_value=small_ints(t, D)),
            TensorSpec("w", [D, D], torch.float32, init_value=small_ints(D, D)),
            TensorSpec("y", [t + (BUG == "dyn"), D], torch.float32, is_output=True)]


def golden_split_k_proj(tensors):
    t = tensors["x"].shape[0]
    tensors["y"][:t] = tensors["x"] @ tensors["w"]  # small ints: exact in fp32


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=split_k_proj, specs=build_tensor_specs(8), golden_fn=golden_split_k_proj,
            rtol=0, atol=0)
