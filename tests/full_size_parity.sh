#!/usr/bin/env bash
# Full-size parity with PyTorch: VGG-16 and ResNet-50 at 224x224 (tests/test_full_size.cpp).
# Needs Debian's python3-torch and python3-torchvision to make the references; without them
# the test is reported as skipped (exit 77), with the reason.
set -euo pipefail
tests=$1 work=$2 source=$(cd "$(dirname "$0")/.." && pwd)
if ! /usr/bin/python3 -c "import torch, torchvision" 2>/dev/null; then
    echo "skipped: python3-torch and python3-torchvision are not installed (apt-get install python3-torchvision)"
    exit 77
fi
/usr/bin/python3 "$source/scripts/make_full_size_reference.py" "$work"
GRADCAM_FULL_SIZE_DIR=$work "$tests" --test-case="full size*"
