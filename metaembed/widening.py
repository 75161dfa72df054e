"""Reading half-precision storage in numba: the bits travel as integers, widened to fp32 in registers.

numba has no bf16 or fp16 type, so a bf16 store is handed over as uint16 and fp16 as int16 (the element
type tells the format), and these helpers turn one element into fp32 with one or two instructions.
"""

from __future__ import annotations

import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

#: How each storage dtype is handed to numba kernels.
BITS_AS = {torch.float32: torch.float32, torch.bfloat16: torch.uint16, torch.float16: torch.int16}


@intrinsic
def _bf16_to_f32(typingctx, bits):
    """bf16 is the top half of an fp32: zero-extend and shift (vectorises to vpmovzxwd + vpslld)."""

    def codegen(context, builder, sig, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _fp16_to_f32(typingctx, bits):
    """IEEE half to float (vcvtph2ps); numba has no float16 type, so the bits arrive as int16."""

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.int16), codegen


def widen(value):
    raise NotImplementedError("only callable from numba-compiled code")


@overload(widen, inline="always")
def _widen_overload(value):
    """The storage format is told by the element type: fp32 as is, bf16 as uint16, fp16 as int16."""
    if value == types.float32:
        return lambda value: value
    if value == types.uint16:
        return lambda value: _bf16_to_f32(value)
    if value == types.int16:
        return lambda value: _fp16_to_f32(value)
    return None
