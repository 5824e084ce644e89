"""Named model shapes shared by the op benchmarks (KERNELS.md §0: batch 16, bf16 on GPU)."""

# MSA-UNet levels at 256×256 input: (B, C, H, W)
MSA_LEVELS = {
    "msa_l0": (16, 64, 256, 256),
    "msa_l1": (16, 128, 128, 128),
    "msa_l2": (16, 256, 64, 64),
    "msa_l3": (16, 512, 32, 32),
    "msa_l4": (16, 512, 16, 16),
}
# Ref-Net's deepest Res2Net feature at 352×352 input.
REFNET_F5 = (16, 2048, 11, 11)
