#!/usr/bin/python3
"""Writes tests/data/io.safetensors: reference outputs of OpenCV and pytorch-grad-cam's image
helpers for tests/test_io.cpp, so the C++ tests need neither Python nor OpenCV to run.

Needs Debian's python3-numpy and python3-opencv (apt-get install python3-opencv). The output is
deterministic: seeded inputs, sorted keys, no timestamps.

Contents (uint8 as U8, float as F32; images HWC RGB):
  jet_lut           [256, 3]   cv2.applyColorMap over levels 0..255, BGR -> RGB
  photo             [10, 12, 3] a seeded random photo
  mask              [10, 12]   a seeded map in [0, 1], holding exact 0 and 1
  overlay_0.5       [10, 12, 3] show_cam_on_image(photo / 255, mask, use_rgb=True, image_weight=0.5)
  overlay_0.3       [10, 12, 3] the same with image_weight=0.3
  gradient          [3, 10, 12] a seeded gradient (CHW, as gradcam's tensors)
  saliency          [10, 12, 3] deprocess_image(gradient as HWC)
  resize_up         [13, 17, 3] cv2.resize(photo, (17, 13), interpolation=INTER_LINEAR)
  resize_down       [4, 5, 3]   cv2.resize(photo, (5, 4), interpolation=INTER_LINEAR)
  mask_resize_up    [13, 17]    cv2.resize(mask, (17, 13)) in float32
  mask_resize_down  [4, 5]      cv2.resize(mask, (5, 4)) in float32
"""

import json
import os
import struct
import sys

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "..", "tests", "data", "io.safetensors")

DTYPES = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}


def write_safetensors(path, tensors):
    """The safetensors layout, by hand: u64 header length, JSON header, little-endian data."""
    header, blobs, offset = {}, [], 0
    for key in sorted(tensors):
        array = np.ascontiguousarray(tensors[key])
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": DTYPES[array.dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"source": "scripts/make_io_goldens.py", "opencv": cv2.__version__,
                              "numpy": np.__version__}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for blob in blobs:
            out.write(blob)


# The arithmetic of pytorch-grad-cam's show_cam_on_image(use_rgb=True) and deprocess_image
# (pytorch_grad_cam/utils/image.py), written out step by step with the same numpy dtypes so the
# script does not need torch: every intermediate is float32, Python floats enter as float32
# scalars, and the final np.uint8 truncates.
def blend_jet(photo_unit, mask, image_weight):
    """photo_unit: float32 HWC RGB in [0, 1]; mask: float32 HW in [0, 1]."""
    assert photo_unit.dtype == np.float32 and photo_unit.max() <= 1 and 0 <= image_weight <= 1
    levels = np.uint8(255 * mask)                                  # truncation
    heat_bgr = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    heat = np.float32(cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)) / 255
    blended = (1 - image_weight) * heat + image_weight * photo_unit
    return np.uint8(255 * (blended / np.max(blended)))


def gradient_picture(gradient_hwc):
    """float32 HWC gradient -> uint8 HWC: standardise, squash around grey, clip, truncate."""
    centred = gradient_hwc - np.mean(gradient_hwc)
    scaled = centred / (np.std(centred) + 1e-5)
    grey = np.clip(scaled * 0.1 + 0.5, 0, 1)
    return np.uint8(grey * 255)


def main():
    rng = np.random.default_rng(20240611)
    levels = np.arange(256, dtype=np.uint8).reshape(1, 256)
    jet_lut = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0]

    photo = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    mask = rng.random((10, 12), dtype=np.float32)
    mask[0, 0], mask[9, 11], mask[4, 5] = 0.0, 1.0, 0.5
    img = np.float32(photo) / 255

    # A gradient as guided backpropagation gives: mostly small, a few large values, not centred.
    gradient = (rng.standard_normal((3, 10, 12)) * 0.02 + 0.003).astype(np.float32)
    gradient[1, 3, 4], gradient[2, 7, 1] = 0.4, -0.3

    tensors = {
        "jet_lut": jet_lut,
        "photo": photo,
        "mask": mask,
        "overlay_0.5": blend_jet(img, mask, 0.5),
        "overlay_0.3": blend_jet(img, mask, 0.3),
        "gradient": gradient,
        "saliency": gradient_picture(gradient.transpose(1, 2, 0)),
        "resize_up": cv2.resize(photo, (17, 13), interpolation=cv2.INTER_LINEAR),
        "resize_down": cv2.resize(photo, (5, 4), interpolation=cv2.INTER_LINEAR),
        "mask_resize_up": cv2.resize(mask, (17, 13), interpolation=cv2.INTER_LINEAR),
        "mask_resize_down": cv2.resize(mask, (5, 4), interpolation=cv2.INTER_LINEAR),
    }
    for key, value in tensors.items():
        assert value.dtype in DTYPES, (key, value.dtype)
    write_safetensors(OUTPUT, tensors)
    print(f"wrote {os.path.normpath(OUTPUT)} ({os.path.getsize(OUTPUT)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
