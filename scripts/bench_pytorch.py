#!/usr/bin/python3
"""Times PyTorch on the work bench/models times: VGG-16, ResNet-18 and ResNet-50 at 224x224.

For each network and batch size: the forward pass under no_grad, and Grad-CAM the common
hook-based way (a forward hook keeps the target layer's output, a tensor hook its gradient,
one backward from the summed top-class scores), once with parameter gradients (the default
when nobody turns them off) and once without (requires_grad_(False) on every parameter).
Then each distinct convolution of ResNet-50 alone, as bench/models' resnet50_convolutions.
Prints one JSON object. Needs Debian's python3-torch and python3-torchvision.

    scripts/bench_pytorch.py [--threads 2] [--repeats 10]

Each time is the fastest of the repeats, as bench/models reports its own (best_ms).
"""
import argparse
import json
import time

import torch
import torchvision

LAYERS = {"vgg16": "features.29", "resnet18": "layer4", "resnet50": "layer4"}


def timed(fn, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def hooked_layer_gradients(model, x, layer):
    """The hook-based way: a forward hook keeps the layer's output, a tensor hook its gradient,
    one backward from the summed top-class scores. Returns activations, gradients, logits and
    the classes."""
    captured = {}
    module = dict(model.named_modules())[layer]

    def forward_hook(_module, _inputs, output):
        captured["activations"] = output
        output.register_hook(lambda grad: captured.__setitem__("gradients", grad))

    handle = module.register_forward_hook(forward_hook)
    try:
        logits = model(x)
        classes = logits.argmax(1)
        logits.gather(1, classes[:, None]).sum().backward()
    finally:
        handle.remove()
    return captured["activations"], captured["gradients"], logits, classes


def grad_cam_map(activations, gradients):
    """ReLU(sum_k alpha_k A^k) with alpha_k the spatial mean of dy/dA^k."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


def grad_cam(model, x, layer):
    activations, gradients, _, _ = hooked_layer_gradients(model, x, layer)
    return grad_cam_map(activations, gradients)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"torch": torch.__version__, "threads": args.threads, "times_ms": {}}
    for name, layer in LAYERS.items():
        model = getattr(torchvision.models, name)().eval()
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            key = f"{name}/{batch}"
            with torch.no_grad():
                results["times_ms"][f"{key}/forward"] = timed(lambda: model(x), args.repeats)
            for p in model.parameters():
                p.requires_grad_(True)
            results["times_ms"][f"{key}/grad_cam_with_parameter_gradients"] = timed(
                lambda: (model.zero_grad(set_to_none=True), grad_cam(model, x, layer)), args.repeats)
            for p in model.parameters():
                p.requires_grad_(False)
            results["times_ms"][f"{key}/grad_cam"] = timed(lambda: grad_cam_no_params(model, x, layer),
                                                           args.repeats)
    results["resnet50_convolutions_ms"] = convolution_times(args.repeats * 3)
    print(json.dumps(results, indent=1))


def convolution_times(repeats):
    """Each distinct convolution of ResNet-50 at 224x224, batch 1, alone under no_grad: the
    fastest call per shape, keyed as bench/models' resnet50_convolutions names its counters."""
    model = torchvision.models.resnet50().eval()
    inputs = {}

    def remember_input(module, args, _output):  # returns None: the output stays as it is
        inputs.setdefault(module, args[0].shape)

    hooks = [module.register_forward_hook(remember_input)
             for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    shapes = {}
    for conv, shape in inputs.items():
        key = (f"{conv.in_channels}->{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]}"
               f" s{conv.stride[0]} {shape[2]}x{shape[3]}")
        count = shapes[key][2] + 1 if key in shapes else 1
        shapes[key] = (conv, shape, count)
    times = {}
    with torch.no_grad():
        for key, (conv, shape, count) in shapes.items():
            x = torch.randn(*shape)
            times[f"{key} x{count}"] = timed(lambda: conv(x), repeats)
    return times


def grad_cam_no_params(model, x, layer):
    # With frozen parameters and an input that needs no gradient, autograd records nothing before
    # the hooked layer: the activation is made a leaf that requires a gradient by the hook.
    captured = {}
    module = dict(model.named_modules())[layer]

    def forward_hook(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured["activations"] = leaf
        return leaf

    handle = module.register_forward_hook(forward_hook)
    try:
        logits = model(x)
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (gradients,) = torch.autograd.grad(score, (captured["activations"],))
    finally:
        handle.remove()
    return grad_cam_map(captured["activations"], gradients)


if __name__ == "__main__":
    main()
