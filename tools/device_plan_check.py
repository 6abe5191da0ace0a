"""On a Hopper GPU: which matmul path the installed build's plan picks here, and that the default path and
the forced Hopper path agree with the CPU reference (used by tools/device_check.sh build-all)."""

import json

import torch

import fpquant_ext as fq

print(fq.__file__)
print(json.dumps(fq.backend_info()))
for M in (16, 4096):
    print(f"plan on {torch.cuda.get_device_name()}, M = {M}: {fq.tuning.plan_matmul(M, 4096, 4096, 'mxfp4')}")
a = torch.randn(256, 512, device="cuda")
b = torch.randn(384, 512, device="cuda")
ca, sa = fq.quantize_mxfp4(a)
cb, sb = fq.quantize_mxfp4(b)
ref = fq.matmul_mxfp4(ca.cpu(), sa.cpu(), cb.cpu(), sb.cpu())
for path in (None, "sm90"):
    with fq.tuning.plan_override(matmul_path=path):
        out = fq.matmul_mxfp4(ca, sa, cb, sb)
    err = float((out.cpu() - ref).norm() / ref.norm())
    print(f"path {path or 'default'}: relative error against the CPU reference {err:.2e}")
