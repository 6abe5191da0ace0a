"""Keeping quantization buffers' dtypes through ``Module.to(dtype)``.

``nn.Module._apply`` converts every floating-point buffer to the requested dtype, and torch counts float8
as floating point: ``model.to(torch.bfloat16)`` would turn E8M0 / E4M3 scales, NVFP4 global scales and
rotation matrices into bfloat16, silently changing their values. Modules holding such buffers list them in
``_FIXED_DTYPE_BUFFERS``; those move between devices (and through ``to_empty``) but keep their dtype and bits.
For the same reason ``load_state_dict`` refuses a tensor of another dtype for them instead of converting its
values (uint8 scale bits copied into a float8 buffer would become other numbers).
"""

from __future__ import annotations

import torch
from torch import nn


class FixedDtypeBuffers(nn.Module):
    _FIXED_DTYPE_BUFFERS: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        held = {}
        for name in self._FIXED_DTYPE_BUFFERS:
            buf = self._buffers.get(name)
            if buf is not None:
                held[name] = buf
                # A None buffer is skipped by Module._apply; the slot (and the state-dict order) stays.
                self._buffers[name] = None
        try:
            super()._apply(fn, recurse)
        finally:
            for name, buf in held.items():
                self._buffers[name] = buf
        for name, buf in held.items():
            # fn sees raw bytes: conversions of floating-point tensors cannot touch them, moves still apply.
            # Module.type(dtype) converts every tensor, uint8 too: then only the move is kept.
            raw = buf.view(torch.uint8)
            moved = fn(raw)
            if moved.dtype != torch.uint8:
                moved = raw.to(moved.device)
            self._buffers[name] = moved.view(buf.dtype)
        self._after_apply()
        return self

    def _after_apply(self) -> None:
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in self._FIXED_DTYPE_BUFFERS:
            key, buf = prefix + name, self._buffers.get(name)
            incoming = state_dict.get(key)
            if buf is not None and isinstance(incoming, torch.Tensor) and incoming.dtype != buf.dtype:
                error_msgs.append(f"{key}: expected dtype {buf.dtype}, got {incoming.dtype} "
                                  "(not converted: the values would change)")
                state_dict[key] = buf  # loading the buffer onto itself leaves it as it was
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
