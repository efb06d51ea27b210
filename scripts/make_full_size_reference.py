#!/usr/bin/python3
"""Full-size PyTorch references for tests/test_full_size.cpp: torchvision's VGG-16 and ResNet-50
with seeded random weights (no download is possible here), one 224x224 input, the logits, and
Grad-CAM (the hook-based way) at the paper's layers: VGG-16 features.29 (relu5_3), ResNet-50
layer4. Writes <name>.weights.safetensors and <name>.reference.safetensors into a directory.

    scripts/make_full_size_reference.py OUTPUT_DIRECTORY
"""
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pytorch import hooked_layer_gradients  # noqa: E402
from export_pytorch import write_safetensors  # noqa: E402

NETWORKS = {"vgg16": "features.29", "resnet50": "layer4"}


def grad_cam_raw(model, x, layer):
    activations, gradients, logits, classes = hooked_layer_gradients(model, x, layer)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return logits.detach(), classes, (weights * activations).sum(dim=1).detach()


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    for name, layer in NETWORKS.items():
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        logits, classes, raw = grad_cam_raw(model, x, layer)
        write_safetensors(os.path.join(out, f"{name}.weights.safetensors"),
                          {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                          {"source": f"torchvision.models.{name}(), seed 0"})
        write_safetensors(os.path.join(out, f"{name}.reference.safetensors"),
                          {"input": x, "logits": logits, "classes": classes, "gradcam_raw": raw},
                          {"layer": layer})
        print(f"{name}: class {classes.item()}, Grad-CAM at {layer} {tuple(raw.shape)}")


if __name__ == "__main__":
    main()
