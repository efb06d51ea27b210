#!/usr/bin/python3
"""Writes a PyTorch state_dict as safetensors, for gradcam's load_state.

    scripts/export_pytorch.py resnet50 resnet50.safetensors            # torchvision, seeded random weights
    scripts/export_pytorch.py resnet50 resnet50.safetensors --weights ckpt.pth
    scripts/export_pytorch.py --checkpoint model.pth model.safetensors  # any state_dict or checkpoint

A torchvision architecture gets random weights from --seed (no download is possible here),
or the weights of a local file (--weights). A checkpoint may be a state_dict, or a dict
holding one under "state_dict" or "model". Floating tensors are written as F32 (or as stored
with --keep-dtype), integer buffers such as BatchNorm's num_batches_tracked as I64.
Needs Debian's python3-torch (and python3-torchvision for architectures by name).
"""
import argparse
import json
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(path, tensors, metadata):
    """The safetensors layout: u64 header length, JSON header, then the tensors' bytes."""
    header, blobs, offset = {}, [], 0
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        data = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        header[key] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for blob in blobs:
            out.write(blob)
    return 8 + len(text) + offset


def load_checkpoint(path):
    state = torch.load(path, map_location="cpu")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        sys.exit(f"{path}: not a state_dict (a dict of tensors), nor a checkpoint holding one")
    # Weights saved from nn.DataParallel carry a "module." prefix.
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("architecture", nargs="?", help="a torchvision model name: vgg16, vgg16_bn, resnet50, ...")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--checkpoint", help="export this state_dict or checkpoint file as it is")
    parser.add_argument("--weights", help="load these weights into the torchvision architecture first")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--keep-dtype", action="store_true", help="keep floating dtypes instead of F32")
    args = parser.parse_args()

    if args.checkpoint:
        state, source = load_checkpoint(args.checkpoint), args.checkpoint
    else:
        if not args.architecture:
            parser.error("name a torchvision architecture, or give --checkpoint")
        import torchvision
        torch.manual_seed(args.seed)
        model = getattr(torchvision.models, args.architecture)(num_classes=args.classes)
        if args.weights:
            model.load_state_dict(load_checkpoint(args.weights))
        state = model.state_dict()
        source = f"torchvision.models.{args.architecture}(num_classes={args.classes})" + (
            f", weights {args.weights}" if args.weights else f", seed {args.seed}")
    if not args.keep_dtype:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    size = write_safetensors(args.output, state, {"source": source, "torch": torch.__version__})
    print(f"wrote {args.output}: {len(state)} tensors, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
