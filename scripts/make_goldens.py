#!/usr/bin/python3
"""Generate the PyTorch reference ("golden") files used by the gradcam C++ tests.

Writes, into --out (default: tests/data next to this script's parent):

  ops.safetensors                       forward references for single ops
  <net>.weights.safetensors             state_dict() of each small network
  <net>.golden.safetensors              inputs, logits and explanation maps

for <net> in vgg_small, resnet_small, vqa_small.

Everything is float32 and fully deterministic (fixed seeds, one thread,
deterministic algorithms): running the script twice gives byte-identical files.
Only torch and numpy are needed; the safetensors format is written by hand.

Usage: scripts/make_goldens.py [--out tests/data]
"""

import argparse
import copy
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_TOTAL_BYTES = 1_500_000

# Seeds.  Each op case gets its own generator seeded from OPS_SEED and a CRC of
# the case name, so adding a case never changes the data of the others.  Each
# network is built right after torch.manual_seed(<net seed>) (PyTorch default
# initialisation draws from the global generator) and its inputs come from a
# separate generator seeded with <net seed> + 1000.
OPS_SEED = 20170607
NET_SEEDS = {
    "vgg_small": 40,
    "resnet_small": 141,
    "vqa_small": 182,
}


# --------------------------------------------------------------------------
# safetensors writer / reader
# --------------------------------------------------------------------------

_DTYPES = {
    torch.float32: ("F32", "<f4"),
    torch.float16: ("F16", "<f2"),
    torch.int64: ("I64", "<i8"),
}


def write_safetensors(path, tensors, metadata):
    """Write `tensors` (name -> torch.Tensor) in safetensors format.

    Tensors are laid out in sorted key order, contiguous, without gaps; the
    JSON header lists them in that same order followed by __metadata__ and is
    padded with spaces so that 8 + len(header) is a multiple of 8.
    """
    header = {}
    chunks = []
    offset = 0
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"{key}: unsupported dtype {t.dtype}")
        tag, np_dtype = _DTYPES[t.dtype]
        raw = t.numpy().astype(np_dtype, copy=False).tobytes(order="C")
        header[key] = {
            "dtype": tag,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
    return os.path.getsize(path)


def read_safetensors(path):
    """Independent reader used to verify what was written."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0, path
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = blob[8 + n:]
    out = {}
    expected = 0
    for key in sorted(header):
        info = header[key]
        begin, end = info["data_offsets"]
        assert begin == expected, (path, key)
        expected = end
        np_dtype = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}[info["dtype"]]
        arr = np.frombuffer(data[begin:end], dtype=np_dtype).reshape(info["shape"])
        out[key] = torch.from_numpy(arr.copy())
    assert expected == len(data), path
    return out, metadata


# --------------------------------------------------------------------------
# single-op references
# --------------------------------------------------------------------------

def make_ops():
    tensors = {}
    meta = {}

    def gen(name):
        g = torch.Generator()
        g.manual_seed(OPS_SEED + zlib.crc32(name.encode()))
        return g

    def randn(g, *shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32)

    def uniform(g, lo, hi, *shape):
        return torch.empty(*shape, dtype=torch.float32).uniform_(lo, hi, generator=g)

    # ---- convolutions -----------------------------------------------------
    conv_cases = [
        # name, x shape, w shape, bias, kwargs
        ("conv_basic", (2, 3, 7, 6), (4, 3, 3, 3), True, dict(stride=1, padding=1)),
        ("conv_strided", (1, 4, 9, 8), (6, 4, 3, 2), True, dict(stride=(2, 3), padding=(1, 0))),
        ("conv_dilated", (1, 2, 10, 9), (3, 2, 3, 3), False, dict(stride=1, padding=2, dilation=2)),
        ("conv_grouped", (2, 6, 7, 7), (4, 3, 3, 3), True, dict(stride=2, padding=1, groups=2)),
        ("conv_depthwise", (1, 4, 6, 6), (4, 1, 3, 3), False, dict(padding=1, groups=4)),
        ("conv_pointwise", (2, 5, 4, 4), (3, 5, 1, 1), True, dict()),
    ]
    for name, xs, ws, has_bias, kw in conv_cases:
        g = gen(name)
        x = randn(g, *xs)
        w = randn(g, *ws)
        b = randn(g, ws[0]) if has_bias else None
        full = dict(stride=1, padding=0, dilation=1, groups=1)
        full.update(kw)
        y = F.conv2d(x, w, b, **full)
        tensors[f"{name}.x"] = x
        tensors[f"{name}.w"] = w
        if b is not None:
            tensors[f"{name}.b"] = b
        tensors[f"{name}.y"] = y
        meta[name] = dict(op="conv2d", bias=has_bias, **full)

    # ---- max pooling ------------------------------------------------------
    maxpool_cases = [
        ("maxpool_basic", (2, 3, 8, 8), dict(kernel_size=2)),
        ("maxpool_overlap", (1, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
        ("maxpool_ceil", (1, 2, 7, 7), dict(kernel_size=2, stride=2, ceil_mode=True)),
        ("maxpool_dilated", (1, 1, 9, 9), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    ]
    for name, xs, kw in maxpool_cases:
        g = gen(name)
        x = randn(g, *xs)
        full = dict(kernel_size=kw["kernel_size"], stride=kw.get("stride", kw["kernel_size"]),
                    padding=kw.get("padding", 0), dilation=kw.get("dilation", 1),
                    ceil_mode=kw.get("ceil_mode", False))
        y = F.max_pool2d(x, **full)
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = y
        meta[name] = dict(op="max_pool2d", **full)

    # ---- average pooling --------------------------------------------------
    avgpool_cases = [
        ("avgpool_basic", (2, 3, 8, 8), dict(kernel_size=2)),
        ("avgpool_pad", (1, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1, count_include_pad=True)),
        ("avgpool_pad_exclude", (1, 2, 9, 9),
         dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
        ("avgpool_ceil", (1, 2, 8, 8), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ]
    for name, xs, kw in avgpool_cases:
        g = gen(name)
        x = randn(g, *xs)
        full = dict(kernel_size=kw["kernel_size"], stride=kw.get("stride", kw["kernel_size"]),
                    padding=kw.get("padding", 0), ceil_mode=kw.get("ceil_mode", False),
                    count_include_pad=kw.get("count_include_pad", True))
        y = F.avg_pool2d(x, **full)
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = y
        meta[name] = dict(op="avg_pool2d", **full)

    # ---- adaptive average pooling ----------------------------------------
    adaptive_cases = [
        ("adaptive_7to3", (1, 2, 7, 7), (3, 3)),
        ("adaptive_5x6to2x4", (1, 2, 5, 6), (2, 4)),
        ("adaptive_global", (2, 3, 5, 5), (1, 1)),
    ]
    for name, xs, size in adaptive_cases:
        g = gen(name)
        x = randn(g, *xs)
        y = F.adaptive_avg_pool2d(x, size)
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = y
        meta[name] = dict(op="adaptive_avg_pool2d", output_size=list(size))

    # ---- linear -----------------------------------------------------------
    g = gen("linear")
    x = randn(g, 3, 5)
    w = randn(g, 4, 5)
    b = randn(g, 4)
    tensors.update({"linear.x": x, "linear.w": w, "linear.b": b, "linear.y": F.linear(x, w, b)})
    meta["linear"] = dict(op="linear", formula="y = x @ w.T + b")

    # ---- batch norm (inference) ------------------------------------------
    g = gen("batchnorm")
    x = randn(g, 2, 3, 4, 4)
    w = uniform(g, 0.5, 1.5, 3)
    b = randn(g, 3) * 0.1
    mean = randn(g, 3) * 0.5
    var = uniform(g, 0.5, 2.0, 3)
    eps = 1e-5
    y = F.batch_norm(x, mean, var, weight=w, bias=b, training=False, eps=eps)
    tensors.update({"batchnorm.x": x, "batchnorm.w": w, "batchnorm.b": b,
                    "batchnorm.mean": mean, "batchnorm.var": var, "batchnorm.y": y})
    meta["batchnorm"] = dict(op="batch_norm", training=False, eps=eps,
                             formula="y = (x - mean) / sqrt(var + eps) * w + b (per channel, dim 1)")

    # ---- softmax family ---------------------------------------------------
    for name, xs, dim, fn in [
        ("softmax", (3, 7), 1, F.softmax),
        ("log_softmax", (3, 7), 1, F.log_softmax),
        ("softmax_axis0", (4, 3, 2), 0, F.softmax),
    ]:
        g = gen(name)
        x = randn(g, *xs)
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = fn(x, dim=dim)
        meta[name] = dict(op=fn.__name__, dim=dim)

    # ---- bilinear interpolation ------------------------------------------
    for name, xs, size in [
        ("interpolate_up", (2, 1, 5, 7), (17, 23)),
        ("interpolate_down", (1, 1, 9, 11), (4, 5)),
    ]:
        g = gen(name)
        x = randn(g, *xs)
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        meta[name] = dict(op="interpolate", size=list(size), mode="bilinear", align_corners=False)

    meta_str = {k: json.dumps(v, sort_keys=True, separators=(",", ":")) for k, v in meta.items()}
    meta_str["seed"] = json.dumps({"ops_seed": OPS_SEED,
                                   "per_case": "torch.Generator seeded with ops_seed + zlib.crc32(case)"})
    return tensors, meta_str


# --------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------

class VggSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(
            nn.Linear(256, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class ResNetSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(
            8, 16, stride=2,
            downsample=nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VqaSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.question = nn.Linear(12, 16)
        self.answer = nn.Linear(16, 5)

    def forward(self, image, q):
        f = torch.flatten(F.adaptive_avg_pool2d(self.cnn(image), 1), 1)
        h = F.relu(self.question(q))
        return self.answer(f * h)


def randomise_batchnorms(model):
    """weight ~ U(0.5,1.5), bias ~ 0.1 N(0,1), mean ~ 0.1 N(0,1), var ~ U(0.5,1.5).

    Uses the global generator, in named_modules() order, drawing the four
    tensors of a layer in the order listed above.
    """
    with torch.no_grad():
        for _, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.empty(c).uniform_(0.5, 1.5))
                m.bias.copy_(torch.randn(c) * 0.1)
                m.running_mean.copy_(torch.randn(c) * 0.1)
                m.running_var.copy_(torch.empty(c).uniform_(0.5, 1.5))


# --------------------------------------------------------------------------
# ReLU replacements for guided backprop / deconvnet
# --------------------------------------------------------------------------

class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * (x > 0).to(grad_out.dtype) * (grad_out > 0).to(grad_out.dtype)


class _DeconvReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out.clamp(min=0)


class _SwappedReLU(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn.apply(x)


def with_swapped_relus(model, fn):
    """Deep copy of `model` with every nn.ReLU module replaced.

    vgg_small and resnet_small only use ReLU modules (no F.relu calls), so
    this covers every ReLU in their forward pass.
    """
    m = copy.deepcopy(model)
    targets = [(parent, name) for parent in m.modules()
               for name, child in parent.named_children() if isinstance(child, nn.ReLU)]
    assert targets
    for parent, name in targets:
        setattr(parent, name, _SwappedReLU(fn))
    m.eval()
    return m


# --------------------------------------------------------------------------
# explanation maps
# --------------------------------------------------------------------------

def top_class_score(classes):
    def score(logits):
        return logits[torch.arange(logits.shape[0]), classes].sum()
    return score


def run_with_hooks(model, inputs, layer, score_fn):
    """Forward with a hook on module `layer`; return logits, A, dscore/dA, dscore/dinputs.

    A forward hook grabs the module output and registers a tensor hook on it
    that records its gradient; the score's gradient is then taken with
    torch.autograd.grad with respect to the (leaf) inputs.
    """
    module = dict(model.named_modules())[layer]
    store = {}

    def tensor_hook(grad):
        store["grad"] = grad.detach().clone()

    def forward_hook(mod, inp, out):
        store["act"] = out
        out.register_hook(tensor_hook)

    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    handle = module.register_forward_hook(forward_hook)
    try:
        logits = model(*inputs)
    finally:
        handle.remove()
    score = score_fn(logits)
    # Independent check of the tensor hook: direct gradient w.r.t. the activation.
    (direct,) = torch.autograd.grad(score, [store["act"]], retain_graph=True)
    input_grads = torch.autograd.grad(score, inputs)
    assert torch.equal(direct, store["grad"]), "tensor hook gradient mismatch"
    return logits.detach(), store["act"].detach(), store["grad"], [g.detach() for g in input_grads]


def cam_from_weights(alpha, A):
    """sum_k alpha[n,k] * A[n,k,:,:]  ->  [N,h,w]"""
    return (alpha[:, :, None, None] * A).sum(dim=1)


def gradcam_raw(A, G):
    return cam_from_weights(G.mean(dim=(2, 3)), A)


def upsample(raw, size):
    return F.interpolate(F.relu(raw)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalise(raw, size):
    out = []
    for n in range(raw.shape[0]):
        m = F.relu(raw[n])
        m = m - m.min()
        m = m / (1e-7 + m.max())
        m = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        m = m - m.min()
        m = m / (1e-7 + m.max())
        out.append(m)
    return torch.stack(out)


def gradcampp_raw(A, G):
    g2 = G ** 2
    g3 = G ** 3
    s = A.sum(dim=(2, 3), keepdim=True)
    a = g2 / (2 * g2 + s * g3 + 1e-6)
    a = torch.where(G != 0, a, torch.zeros_like(a))
    w = (F.relu(G) * a).sum(dim=(2, 3))
    return cam_from_weights(w, A)


def xgradcam_raw(A, G):
    w = (G * A).sum(dim=(2, 3)) / (A.sum(dim=(2, 3)) + 1e-7)
    return cam_from_weights(w, A)


def hirescam_raw(A, G):
    return (G * A).sum(dim=1)


def layercam_raw(A, G):
    return (F.relu(G) * A).sum(dim=1)


def check_map(net, key, raw):
    """Non-degeneracy: every image's raw map has both signs, relu'd map non-zero."""
    for n in range(raw.shape[0]):
        r = raw[n]
        if not (r.max() > 0 and r.min() < 0 and F.relu(r).max() > 0):
            raise SystemExit(
                f"{net}: {key}[{n}] is degenerate (min {r.min():.3g}, max {r.max():.3g}); "
                f"change the seed in NET_SEEDS")


def build(net):
    seed = NET_SEEDS[net]
    torch.manual_seed(seed)
    model = {"vgg_small": VggSmall, "resnet_small": ResNetSmall, "vqa_small": VqaSmall}[net]()
    if net == "resnet_small":
        randomise_batchnorms(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    g = torch.Generator()
    g.manual_seed(seed + 1000)
    if net == "vqa_small":
        inputs = [torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 12, generator=g)]
    else:
        inputs = [torch.randn(2, 3, 32, 32, generator=g)]
    return model, inputs


NET_LAYERS = {
    "vgg_small": ("features.8", "features.3"),
    "resnet_small": ("layer2", "layer1"),
    "vqa_small": ("cnn.3", None),
}


def make_net(net):
    model, inputs = build(net)
    layer, early = NET_LAYERS[net]
    H, W = inputs[0].shape[2:]
    size = (H, W)

    with torch.no_grad():
        logits = model(*inputs)
    classes = logits.argmax(dim=1)

    out = {"input": inputs[0], "logits": logits, "classes": classes.to(torch.int64)}
    if net == "vqa_small":
        out["question"] = inputs[1]

    top = top_class_score(classes)
    lg, A, G, in_grads = run_with_hooks(model, inputs, layer, top)
    assert torch.equal(lg, logits)
    out["activations"] = A
    out["gradients"] = G
    raw = gradcam_raw(A, G)
    out["gradcam_raw"] = raw
    out["gradcam_upsampled"] = upsample(raw, size)
    out["gradcam_normalised"] = normalise(raw, size)
    check_map(net, "gradcam_raw", raw)

    meta = {
        "net": net,
        "layer": layer,
        "seed": str(NET_SEEDS[net]),
        "input_seed": str(NET_SEEDS[net] + 1000),
        "classes": json.dumps(classes.tolist()),
        "score": "sum_n logits[n, classes[n]] unless stated otherwise",
        "interpolation": "bilinear, align_corners=False",
    }

    if net == "vqa_small":
        def diff_score(lgt):
            return (lgt[:, 2] - lgt[:, 0]).sum()
        _, A2, G2, _ = run_with_hooks(model, inputs, layer, diff_score)
        out["gradcam_answer_diff_raw"] = gradcam_raw(A2, G2)
        check_map(net, "gradcam_answer_diff_raw", out["gradcam_answer_diff_raw"])
        meta["gradcam_answer_diff_raw"] = "score = sum_n (logits[n,2] - logits[n,0])"
        return model, out, meta

    # counterfactual: alpha from negated gradients
    cf = gradcam_raw(A, -G)
    out["counterfactual_raw"] = cf
    out["counterfactual_upsampled"] = upsample(cf, size)
    check_map(net, "counterfactual_raw", cf)

    # class 3 for both images
    _, A3, G3, _ = run_with_hooks(model, inputs, layer, top_class_score(torch.tensor([3, 3])))
    out["gradcam_class3_raw"] = gradcam_raw(A3, G3)
    check_map(net, "gradcam_class3_raw", out["gradcam_class3_raw"])

    # log-softmax score of the top class
    def logsoftmax_score(lgt):
        return F.log_softmax(lgt, dim=1)[torch.arange(lgt.shape[0]), classes].sum()
    _, Al, Gl, _ = run_with_hooks(model, inputs, layer, logsoftmax_score)
    out["gradcam_logsoftmax_raw"] = gradcam_raw(Al, Gl)
    check_map(net, "gradcam_logsoftmax_raw", out["gradcam_logsoftmax_raw"])

    out["gradcampp_raw"] = gradcampp_raw(A, G)
    out["xgradcam_raw"] = xgradcam_raw(A, G)
    out["hirescam_raw"] = hirescam_raw(A, G)
    out["layercam_raw"] = layercam_raw(A, G)

    # earlier layer
    _, Ae, Ge, _ = run_with_hooks(model, inputs, early, top)
    out["early_gradcam_raw"] = gradcam_raw(Ae, Ge)
    check_map(net, "early_gradcam_raw", out["early_gradcam_raw"])
    meta["early_layer"] = early

    # input-space maps
    out["vanilla_gradient"] = in_grads[0]
    for key, fn in [("guided_backprop", _GuidedReLUFn), ("deconvnet", _DeconvReLUFn)]:
        swapped = with_swapped_relus(model, fn)
        x = inputs[0].detach().clone().requires_grad_(True)
        lgt = swapped(x)
        assert torch.equal(lgt.detach(), logits)
        (gx,) = torch.autograd.grad(top(lgt), [x])
        out[key] = gx
    out["guided_gradcam"] = out["guided_backprop"] * out["gradcam_upsampled"][:, None]

    if net == "resnet_small":
        wfc = model.fc.weight.detach()[classes]          # [N, C]
        cam = cam_from_weights(wfc, A)
        out["cam_raw"] = cam
        out["cam_upsampled"] = upsample(cam, size)
        out["cam_normalised"] = normalise(cam, size)
        meta["cam_raw"] = "sum_k fc.weight[classes[n], k] * A[n, k] with A = output of layer2"
        # Independent check: for a GAP + FC head alpha_k = w_k / (h*w).
        hw = A.shape[2] * A.shape[3]
        err = (out["gradcam_raw"] - cam / hw).abs().max().item()
        scale = cam.abs().max().item() / hw
        assert err <= 1e-5 * scale, f"Grad-CAM != CAM/(h*w): {err} (scale {scale})"
        print(f"  check: resnet_small gradcam_raw == cam_raw/{hw} (max abs err {err:.3g}, "
              f"map scale {scale:.3g})")

    return model, out, meta


def state_dict_tensors(model):
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if v.dtype == torch.float32:
            out[k] = v.detach().clone()
        elif v.dtype == torch.int64:
            out[k] = v.detach().clone()
        else:
            raise TypeError(f"{k}: {v.dtype}")
    return out


# --------------------------------------------------------------------------
# training: batch norm in training mode, cross-entropy, optimizers, one full step
# --------------------------------------------------------------------------
def make_training():
    tensors, meta = {}, {}

    def gen(name):
        return torch.Generator().manual_seed(OPS_SEED + zlib.crc32(name.encode()))

    # Batch norm with batch statistics: output, updated running statistics, gradients of
    # sum(r * y) with respect to x, weight and bias.
    g = gen("batchnorm_train")
    x = torch.randn(4, 3, 3, 3, generator=g).requires_grad_()
    w = (torch.rand(3, generator=g) + 0.5).requires_grad_()
    b = (torch.randn(3, generator=g) * 0.1).requires_grad_()
    r = torch.randn(4, 3, 3, 3, generator=g)
    running_mean = torch.randn(3, generator=g) * 0.2
    running_var = torch.rand(3, generator=g) + 0.5
    tensors["batchnorm_train.running_mean"] = running_mean.clone()
    tensors["batchnorm_train.running_var"] = running_var.clone()
    y = F.batch_norm(x, running_mean, running_var, weight=w, bias=b, training=True, momentum=0.1, eps=1e-5)
    dx, dw, db = torch.autograd.grad((r * y).sum(), (x, w, b))
    tensors.update({"batchnorm_train.x": x.detach(), "batchnorm_train.w": w.detach(),
                    "batchnorm_train.b": b.detach(), "batchnorm_train.r": r, "batchnorm_train.y": y.detach(),
                    "batchnorm_train.running_mean_after": running_mean,
                    "batchnorm_train.running_var_after": running_var,
                    "batchnorm_train.dx": dx, "batchnorm_train.dw": dw, "batchnorm_train.db": db})
    meta["batchnorm_train"] = dict(op="batch_norm", training=True, momentum=0.1, eps=1e-5)

    # Cross-entropy (mean over the batch) and its gradient.
    g = gen("cross_entropy")
    logits = torch.randn(5, 7, generator=g).requires_grad_()
    labels = torch.tensor([3, 0, 6, 3, 1])
    loss = F.cross_entropy(logits, labels)
    (dlogits,) = torch.autograd.grad(loss, (logits,))
    tensors.update({"cross_entropy.x": logits.detach(), "cross_entropy.labels": labels,
                    "cross_entropy.y": loss.detach(), "cross_entropy.dx": dlogits})
    meta["cross_entropy"] = dict(op="cross_entropy", reduction="mean")

    # Three optimizer steps from p0 with given gradients; the parameter after each step.
    g = gen("optimizers")
    p0 = torch.randn(6, generator=g)
    grads = torch.randn(3, 6, generator=g)
    tensors["optim.p0"] = p0
    tensors["optim.grads"] = grads
    optimizers = [
        ("sgd", "SGD(lr=0.1, momentum=0.9, weight_decay=0.01)",
         lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)),
        ("sgd_nesterov", "SGD(lr=0.1, momentum=0.9, nesterov=True)",
         lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
        ("sgd_plain", "SGD(lr=0.1)", lambda ps: torch.optim.SGD(ps, lr=0.1)),
        ("adam", "Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)",
         lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)),
    ]
    for name, text, make in optimizers:
        p = torch.nn.Parameter(p0.clone())
        opt = make([p])
        after = []
        for k in range(3):
            p.grad = grads[k].clone()
            opt.step()
            after.append(p.detach().clone())
        tensors[f"optim.{name}"] = torch.stack(after)
        meta[f"optim.{name}"] = text

    # One training step of a small network in training mode: the loss, every parameter's
    # gradient, and the running statistics batch norm leaves behind.
    torch.manual_seed(OPS_SEED)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    for name, t in state_dict_tensors(model).items():
        tensors[f"step.before.{name}"] = t.clone()
    g = gen("training_step")
    x = torch.randn(6, 3, 8, 8, generator=g)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    model.train()
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    tensors.update({"step.x": x, "step.labels": labels, "step.loss": loss.detach()})
    for name, param in model.named_parameters():
        tensors[f"step.grad.{name}"] = param.grad.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3).step()
    for name, param in model.named_parameters():
        tensors[f"step.updated.{name}"] = param.detach().clone()
    for name, t in state_dict_tensors(model).items():
        if "running" in name or "num_batches" in name:
            tensors[f"step.after.{name}"] = t.clone()
    meta["step"] = ("Sequential(Conv2d(3,4,3,p=1), BatchNorm2d(4), ReLU, MaxPool2d(2), "
                    "Conv2d(4,6,3,p=1,bias=False), BatchNorm2d(6), ReLU, AdaptiveAvgPool2d(1), Flatten, "
                    "Linear(6,5)), train(), cross_entropy, then SGD(lr=0.1, momentum=0.9, "
                    "weight_decay=1e-3).step() (step.updated.*)")
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))
            for k, v in meta.items()}
    return tensors, meta


# --------------------------------------------------------------------------
# the model builders: a Bottleneck ResNet and a VGG with batch norm, small, with torchvision's
# module layout, so the C++ builders are checked against PyTorch for those block types too
# --------------------------------------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class BottleneckSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(Bottleneck(8, 4, 1, nn.Sequential(nn.Conv2d(8, 16, 1, bias=False),
                                                                       nn.BatchNorm2d(16))))
        self.layer2 = nn.Sequential(Bottleneck(16, 8, 2, nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False),
                                                                        nn.BatchNorm2d(32))))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer2(self.layer1(x))), 1))


class VggBnSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class CifarBlock(nn.Module):
    """A CIFAR ResNet block with the parameter-free "option A" shortcut."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - inplanes) // 2 if stride != 1 or inplanes != planes else None
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad is None:
            shortcut = x
        else:
            shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, inplanes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(3):
                blocks.append(CifarBlock(inplanes, planes, 2 if stage > 0 and b == 0 else 1))
                inplanes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def make_builders():
    tensors, meta = {}, {}
    for name, cls, layer, size in [("bottleneck", BottleneckSmall, "layer2", 24),
                                   ("vgg_bn", VggBnSmall, "features.9", 24),
                                   ("cifar_resnet20", CifarResNet20, "layer3", 32)]:
        torch.manual_seed(OPS_SEED + zlib.crc32(name.encode()))
        model = cls()
        randomise_batchnorms(model)
        model.eval()
        half = name == "cifar_resnet20"  # 0.27M weights: stored as F16 (exact in float) to stay small
        with torch.no_grad():
            for p in model.parameters():
                if half:
                    p.copy_(p.half().float())
        for key, t in state_dict_tensors(model).items():
            tensors[f"{name}.weights.{key}"] = t.half() if half and t.is_floating_point() else t
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(OPS_SEED + 7))
        captured = {}
        module = dict(model.named_modules())[layer]
        hook = module.register_forward_hook(lambda mod, inp, out: captured.__setitem__("A", out))
        logits = model(x)
        hook.remove()
        classes = logits.argmax(dim=1)
        score = logits[torch.arange(2), classes].sum()
        (grads,) = torch.autograd.grad(score, (captured["A"],))
        raw = (grads.mean(dim=(2, 3), keepdim=True) * captured["A"]).sum(dim=1)
        tensors.update({f"{name}.input": x, f"{name}.logits": logits.detach(),
                        f"{name}.gradcam_raw": raw.detach()})
        meta[name] = json.dumps({"layer": layer, "classes": classes.tolist()})
    return tensors, meta


# --------------------------------------------------------------------------

def main():
    default_out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "tests", "data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=default_out, help="output directory (default: tests/data)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)

    files = []  # (path, tensors, metadata)

    tensors, meta = make_ops()
    files.append(("ops.safetensors", tensors, meta))
    tensors, meta = make_training()
    files.append(("training.safetensors", tensors, meta))
    tensors, meta = make_builders()
    files.append(("builders.safetensors", tensors, meta))

    for net in ["vgg_small", "resnet_small", "vqa_small"]:
        print(f"computing {net}")
        model, golden, gmeta = make_net(net)
        files.append((f"{net}.weights.safetensors", state_dict_tensors(model),
                      {"net": net, "seed": str(NET_SEEDS[net]),
                       "content": "state_dict() of the model (eval mode)"}))
        files.append((f"{net}.golden.safetensors", golden, gmeta))

    total = 0
    for name, tensors, meta in files:
        path = os.path.join(args.out, name)
        size = write_safetensors(path, tensors, meta)
        total += size
        back, back_meta = read_safetensors(path)
        assert sorted(back) == sorted(tensors) and back_meta == {k: str(v) for k, v in meta.items()}
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v.detach()), (name, k)
        print(f"wrote {path}  {size:>8} bytes  {len(tensors)} tensors")
    print(f"total {total} bytes")
    assert total < MAX_TOTAL_BYTES, f"goldens too large: {total} >= {MAX_TOTAL_BYTES}"


if __name__ == "__main__":
    sys.exit(main())
