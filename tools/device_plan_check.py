"""On a Hopper GPU: which matmul path the installed build's plan picks here, and that the default path and
the forced Hopper (and, for a bf16 output, w4a16) paths agree with the CPU reference (used by
tools/device_check.sh build-all)."""

import json

import torch

import fpquant_ext as fq

print(fq.__file__)
print(json.dumps(fq.backend_info()))
for M in (16, 4096):
    for out_dtype in (torch.float32, torch.bfloat16):
        plan = fq.tuning.plan_matmul(M, 4096, 4096, "mxfp4", out_dtype)
        print(f"plan on {torch.cuda.get_device_name()}, M = {M}, {out_dtype}: {plan}")
a = torch.randn(256, 512, device="cuda")
b = torch.randn(384, 512, device="cuda")
ca, sa = fq.quantize_mxfp4(a)
cb, sb = fq.quantize_mxfp4(b)
for out_dtype, paths in ((torch.float32, (None, "sm90")), (torch.bfloat16, (None, "sm90", "w4a16"))):
    ref = fq.matmul_mxfp4(ca.cpu(), sa.cpu(), cb.cpu(), sb.cpu(), "linear", out_dtype).double()
    for path in paths:
        with fq.tuning.plan_override(matmul_path=path):
            out = fq.matmul_mxfp4(ca, sa, cb, sb, "linear", out_dtype)
        err = float((out.cpu().double() - ref).norm() / ref.norm())
        print(f"{out_dtype}, path {path or 'default'}: relative error against the CPU reference {err:.2e}")
