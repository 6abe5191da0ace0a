"""Host models of GPU instructions that the kernel emulation tests share."""


def prmt(a: int, b: int, sel: int) -> int:
    """prmt.b32 default mode: result byte i is byte (sel_i & 7) of {b, a}; if sel_i & 8 the sign of that
    byte is replicated."""
    pool = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        s = (sel >> (4 * i)) & 0xF
        byte = pool[s & 7]
        if s & 8:
            byte = 0xFF if byte & 0x80 else 0x00
        out |= byte << (8 * i)
    return out


def blocked_offset(row: int, col: int, cols: int) -> int:
    """core::blocked_offset (csrc/core/scale_layout.h): byte of scale (row, col) in the blocked 128x4 layout."""
    tile = (row // 128) * (-(-cols // 4)) + col // 4
    rr = row % 128
    return tile * 512 + (rr % 32) * 16 + (rr // 32) * 4 + col % 4
